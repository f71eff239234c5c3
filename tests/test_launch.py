"""``python -m msvision.launch``: environment of each process, prefixed output, exit status,
and a failed process stopping the others (no JAX here; the real multi-process runs are
``tests/train/test_multiprocess.py``)."""

import os
import pathlib
import subprocess
import sys
import time

from msvision import launch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _launch(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "msvision.launch", *args], cwd=ROOT, env=env,
                          capture_output=True, timeout=timeout)
    # Decoded by hand: text mode would turn the "\r" of progress bars into "\n".
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def test_each_process_gets_its_id_and_the_shared_coordinator():
    script = ("import os; print(os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'], "
              "os.environ['JAX_COORDINATOR_ADDRESS'], os.environ.get('JAX_NUM_CPU_DEVICES'))")
    proc = _launch("--num-processes=3", "--cpu-devices-per-process=2", "--", sys.executable, "-c", script)
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.splitlines())
    assert [line.split()[:3] for line in lines] == [[f"[p{i}]", str(i), "3"] for i in range(3)]
    coordinators = {line.split()[3] for line in lines}
    assert len(coordinators) == 1
    host, port = coordinators.pop().rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536
    assert {line.split()[4] for line in lines} == {"2"}


def test_output_segments_are_prefixed_on_both_streams():
    script = ("import os, sys; i = os.environ['JAX_PROCESS_ID']; "
              "sys.stdout.write(f'a{i}\\rb{i}\\nc{i}'); sys.stderr.write(f'err{i}\\n')")
    proc = _launch("-n", "2", "--", sys.executable, "-c", script)
    assert proc.returncode == 0, proc.stderr
    for i in range(2):
        # \r-terminated progress-bar redraws are prefixed too; an unterminated tail is flushed.
        assert f"[p{i}] a{i}\r[p{i}] b{i}\n" in proc.stdout
        assert f"[p{i}] c{i}\n" in proc.stdout
        assert f"[p{i}] err{i}\n" in proc.stderr
        assert f"err{i}" not in proc.stdout


def test_first_failure_stops_the_others_and_sets_the_exit_status():
    # Process 1 exits with 3 at once; process 0 would wait forever (as in a collective).
    script = ("import os, sys, time; i = int(os.environ['JAX_PROCESS_ID']); "
              "sys.exit(3) if i == 1 else time.sleep(600)")
    start = time.monotonic()
    proc = _launch("-n", "2", "--grace=1", "--", sys.executable, "-c", script)
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - start < 60
    assert "process 1 failed first" in proc.stderr and "p1=3" in proc.stderr
    assert "p0=143" in proc.stderr  # 128 + SIGTERM


def test_worst_status_when_all_fail_is_the_first_failure():
    script = "import os, sys, time; i = int(os.environ['JAX_PROCESS_ID']); time.sleep(2 * i); sys.exit(5 + i)"
    proc = _launch("-n", "2", "--grace=30", "--", sys.executable, "-c", script)
    assert proc.returncode == 5, proc.stderr
    assert "p0=5, p1=6" in proc.stderr


def test_command_forms_and_usage():
    assert launch.resolve_command(["train.py", "--x"]) == [sys.executable, "train.py", "--x"]
    assert launch.resolve_command(["-m", "pytest"]) == [sys.executable, "-m", "pytest"]
    assert launch.resolve_command(["srun", "x"]) == ["srun", "x"]
    env = launch.process_env({"A": "1"}, coordinator="h:1", num_processes=4, process_id=2)
    assert env == {"A": "1", "JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert _launch("-n", "2").returncode == 2  # no "--"
