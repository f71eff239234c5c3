"""Run a command as N local JAX processes of one job.

``python -m msvision.launch --num-processes 2 -- train.py --config=configs/quickstart.py --workdir=runs/q``

Starts N copies of the command, each with ``JAX_COORDINATOR_ADDRESS`` (``127.0.0.1``
and a free port picked now, or ``--port``), ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID``, which :func:`msvision.train.sharding.initialize_distributed`
turns into ``jax.distributed.initialize``. This is how the multi-process tests run,
and a way to try multi-process code on one machine; on real hosts start one process
per host yourself (or with SLURM / Open MPI), see ``docs/multihost.md``.

- A command starting with a ``.py`` file or ``-m`` runs under this Python.
- ``--cpu-devices-per-process K`` sets ``JAX_NUM_CPU_DEVICES=K`` (CPU backend only),
  e.g. 2 processes × 2 devices = a 4-device mesh.
- Every output line is forwarded with a ``[p0]``/``[p1]``/… prefix (stdout to stdout,
  stderr to stderr).
- When one process fails, the others are given ``--grace`` seconds to exit on their
  own and are then terminated: they would otherwise wait in a collective for the
  process that is gone until the coordinator's heartbeat timeout.
- The exit status is 0 when every process exits 0, otherwise that of the first
  process to fail (a process killed by signal S counts as 128 + S); the others'
  statuses are printed to stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Optional, Sequence


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it; a later bind may still race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_env(base: dict, *, coordinator: str, num_processes: int, process_id: int,
                cpu_devices: Optional[int] = None) -> dict:
    """The environment of process ``process_id``: ``base`` plus the ``JAX_*`` variables."""
    env = dict(base)
    env.update(JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id))
    if cpu_devices:
        env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
    return env


def resolve_command(command: Sequence[str]) -> list[str]:
    """``train.py …`` and ``-m pkg …`` run under this interpreter; anything else as given."""
    command = list(command)
    if command and (command[0].endswith(".py") or command[0] == "-m"):
        return [sys.executable] + command
    return command


def _forward(stream: IO[bytes], out: IO[str], prefix: str, lock: threading.Lock) -> None:
    """Copies ``stream`` to ``out`` segment by segment, each prefixed; a segment ends at
    ``\\n`` or ``\\r`` (progress bars redraw with ``\\r``)."""
    pending = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        pending += chunk
        while True:
            cut = min((i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            segment, pending = pending[: cut + 1], pending[cut + 1:]
            with lock:
                out.write(prefix + segment.decode(errors="replace"))
                out.flush()
    if pending:
        with lock:
            out.write(prefix + pending.decode(errors="replace") + "\n")
            out.flush()


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _stop(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child's own session: reaches its workers too
    except ProcessLookupError:
        pass


def launch(command: Sequence[str], num_processes: int, *, port: int = 0, host: str = "127.0.0.1",
           cpu_devices: Optional[int] = None, grace: float = 10.0, env: Optional[dict] = None,
           cwd: Optional[str] = None) -> int:
    """Runs ``command`` as ``num_processes`` processes of one JAX job; returns the exit status
    (see the module docstring)."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    command = resolve_command(command)
    coordinator = f"{host}:{port or free_port(host)}"
    base = dict(os.environ if env is None else env)
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    try:
        for i in range(num_processes):
            proc = subprocess.Popen(
                command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=process_env(base, coordinator=coordinator, num_processes=num_processes, process_id=i,
                                cpu_devices=cpu_devices),
                start_new_session=True)
            procs.append(proc)
            for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
                thread = threading.Thread(target=_forward, args=(stream, out, f"[p{i}] ", lock), daemon=True)
                thread.start()
                threads.append(thread)
        first_failure: Optional[int] = None
        deadline: Optional[float] = None
        while [p.poll() for p in procs].count(None):  # poll() every process: it sets returncode
            if first_failure is None:
                failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
                if failed:
                    first_failure = failed[0]
                    deadline = time.monotonic() + grace
            elif time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        _stop(p, signal.SIGTERM)
                _wait_or_kill(procs, 10.0)  # then SIGKILL
            time.sleep(0.05)
    except BaseException:  # KeyboardInterrupt, or an error starting a process
        for p in procs:
            _stop(p, signal.SIGTERM)
        _wait_or_kill(procs, 10.0)
        raise
    for thread in threads:
        thread.join(timeout=5.0)
    codes = [_status(p.returncode) for p in procs]
    if first_failure is None:
        failed = [i for i, code in enumerate(codes) if code]
        first_failure = failed[0] if failed else None
    if first_failure is None:
        return 0
    print(f"msvision.launch: process {first_failure} failed first; exit statuses "
          + ", ".join(f"p{i}={c}" for i, c in enumerate(codes)), file=sys.stderr)
    return codes[first_failure]


def _wait_or_kill(procs: list[subprocess.Popen], timeout: float) -> None:
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            _stop(p, signal.SIGKILL)
            p.wait()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        print("usage: python -m msvision.launch --num-processes N [options] -- COMMAND ...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m msvision.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--num-processes", "-n", type=int, required=True)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="coordinator host (this machine)")
    parser.add_argument("--cpu-devices-per-process", type=int, default=None,
                        help="sets JAX_NUM_CPU_DEVICES in every process (CPU backend)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds the other processes get to exit after one fails")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        parser.error("no command after --")
    return launch(command, args.num_processes, port=args.port, host=args.host,
                  cpu_devices=args.cpu_devices_per_process, grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
