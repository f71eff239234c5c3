"""One training run per work directory: the ``WORKDIR/train.lock`` file.

``train.py`` takes the lock before it writes anything into the work directory and
releases it when it ends. The lock file is JSON naming its holder: ``host``, ``pid``,
``since`` (when the run started) and ``heartbeat`` (a time the holder rewrites every
:data:`HEARTBEAT_SECONDS` from a background thread). A second ``train.py`` on the same
directory stops with :class:`WorkdirLockedError` naming the holder.

A lock whose holder is gone does not block the next start:

- same host: the holder is gone when its pid is no longer running (or is now
  another program: the process start time is recorded beside the pid);
- another host: the holder is gone when its heartbeat is older than
  :data:`STALE_AFTER_SECONDS` (a host that lost power or network stops refreshing it).

Taking a stale lock over is logged. The check and the write happen under an
exclusive ``flock`` of ``WORKDIR/train.lock.guard``, so two runs starting at once
cannot both take it (on filesystems where ``flock`` does not reach other hosts, two
runs started on two hosts within the same moment are not told apart).

In a multi-process run only process 0 takes the lock; the others learn from it
whether it succeeded (:func:`acquire_for_run`) and stop with it when it did not.
Evaluation and prediction do not take the lock: they only read checkpoints, which
are theirs once complete (:mod:`msvision.checkpoint`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Optional

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 120.0  # 12 missed heartbeats: a host that is gone, not a busy one


class WorkdirLockedError(RuntimeError):
    """Another live training run holds the work directory."""


def _process_start_time(pid: int) -> Optional[str]:
    """The start time of ``pid`` (Linux ``/proc``, clock ticks since boot), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_running(pid: int, start_time: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if start_time is not None:
        now = _process_start_time(pid)
        if now is not None and now != start_time:
            return False  # the pid was reused by another program
    return True


def describe(holder: dict) -> str:
    since = holder.get("since")
    since_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {since_text}"


def holder_is_alive(holder: dict, *, now: Optional[float] = None, stale_after: float = STALE_AFTER_SECONDS
                    ) -> tuple[bool, str]:
    """Whether the lock holder ``holder`` (the lock file's JSON) is still running, and why not."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if _pid_running(holder["pid"], holder.get("pid_start")):
            return True, ""
        return False, f"process {holder['pid']} is no longer running"
    heartbeat = holder.get("heartbeat")
    if not isinstance(heartbeat, (int, float)):
        return False, "the lock file has no heartbeat"
    age = now - heartbeat
    if age > stale_after:
        return False, f"its heartbeat is {age:.0f} s old (a lock is stale after {stale_after:.0f} s)"
    return True, ""


class WorkdirLock:
    """The lock of one work directory, held by this process while it trains.

    Args:
      workdir: the work directory.
      heartbeat_seconds, stale_after: see the module docstring (tests shorten them).
    """

    def __init__(self, workdir: str, *, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 stale_after: float = STALE_AFTER_SECONDS):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_after = stale_after
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def read(self) -> Optional[dict]:
        """The lock file's contents, None if there is none; an unreadable file reads as ``{}``."""
        try:
            with open(self.path) as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    @contextlib.contextmanager
    def _guard(self):
        with open(self.path + ".guard", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)

    def _write(self, record: dict) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self.path)

    def acquire(self) -> None:
        """Takes the lock, or raises :class:`WorkdirLockedError` naming the live holder."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with self._guard():
            holder = self.read()
            if holder is not None:
                alive, why = holder_is_alive(holder, stale_after=self.stale_after)
                if alive:
                    raise WorkdirLockedError(
                        f"{os.path.dirname(self.path)} is in use by another training run ({describe(holder)}; "
                        f"lock file {self.path}). Wait for it to finish, stop it, or use another --workdir.")
                log.warning("taking over the lock of a training run that is gone (%s): %s", describe(holder), why)
            now = time.time()
            self.record = dict(host=socket.gethostname(), pid=os.getpid(), pid_start=_process_start_time(os.getpid()),
                               since=now, heartbeat=now, token=self.token)
            self._write(self.record)
        self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                with self._guard():
                    holder = self.read()
                    if not holder or holder.get("token") != self.token:
                        log.error("the lock %s was taken over by %s while this run held it: two runs may now "
                                  "write to this work directory", self.path, describe(holder or {}))
                        return
                    self._write(dict(self.record, heartbeat=time.time()))
            except OSError as e:  # a full disk must not stop training; the lock may go stale
                log.warning("could not refresh %s: %s", self.path, e)

    def release(self) -> None:
        """Stops the heartbeat and removes the lock file if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._guard():
            holder = self.read()
            if holder and holder.get("token") == self.token:
                os.remove(self.path)


def acquire_for_run(workdir: str) -> Optional[WorkdirLock]:
    """Takes ``workdir``'s lock in process 0 and shares the outcome with every process.

    Returns the lock (process 0) or None (the other processes). Every process raises
    :class:`WorkdirLockedError` when process 0 could not take it, so that none of them
    goes on (or waits for the others in a collective).
    """
    import jax
    import numpy as np

    lock, error = None, ""
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir)
        try:
            lock.acquire()
        except WorkdirLockedError as e:
            lock, error = None, str(e)
    ok = lock is not None if jax.process_index() == 0 else True
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
    if not ok:
        if not error:
            holder = WorkdirLock(workdir).read() or {}
            error = f"{os.path.abspath(workdir)} is in use by another training run ({describe(holder)})"
        raise WorkdirLockedError(error)
    return lock

