"""One training run per work directory: a live holder refuses a second run, a dead one does not block."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from msvision.train import workdir_lock

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")

HOLD = """
import sys, time
from msvision.train.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1], heartbeat_seconds=0.05)
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(workdir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_live_holder_refuses_a_second_run_and_a_killed_one_does_not_block(tmp_path, capsys):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(workdir_lock.WorkdirLockedError) as error:
            workdir_lock.WorkdirLock(str(tmp_path)).acquire()
        assert f"host {socket.gethostname()}, pid {proc.pid}, since 20" in str(error.value)
        # The train loop refuses before it reads any data or writes anything.
        sys.path.insert(0, os.path.dirname(__file__))
        import tiny_config

        from msvision.train import loop

        with pytest.raises(workdir_lock.WorkdirLockedError, match=f"pid {proc.pid}"):
            loop.train(tiny_config.get_config(str(tmp_path / "no_data")), str(tmp_path))
        assert sorted(os.listdir(tmp_path)) == ["train.lock", "train.lock.guard"]
        # train.py: one line naming the holder, exit status 2.
        import train as train_cli

        config = os.path.join(ROOT, "tests", "train", "tiny_config.py")
        assert train_cli.main([f"--config={config}:{tmp_path / 'no_data'}", f"--workdir={tmp_path}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("train.py: error: ") and f"pid {proc.pid}" in err[0]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock = workdir_lock.WorkdirLock(str(tmp_path))
    lock.acquire()  # the holder was killed: its lock no longer counts
    assert lock.read()["pid"] == os.getpid()
    lock.release()
    assert not os.path.exists(tmp_path / "train.lock")


def test_heartbeat_is_refreshed_and_a_lost_hosts_lock_expires(tmp_path):
    lock = workdir_lock.WorkdirLock(str(tmp_path), heartbeat_seconds=0.05)
    lock.acquire()
    first = lock.read()["heartbeat"]
    time.sleep(0.3)
    assert lock.read()["heartbeat"] > first and lock.read()["since"] == lock.record["since"]
    lock.release()

    path = tmp_path / "train.lock"
    other = dict(host="another-host", pid=1, since=time.time() - 3600, heartbeat=time.time() - 5)
    path.write_text(json.dumps(other))
    with pytest.raises(workdir_lock.WorkdirLockedError, match="host another-host, pid 1"):
        workdir_lock.WorkdirLock(str(tmp_path), stale_after=60).acquire()
    path.write_text(json.dumps(dict(other, heartbeat=time.time() - 61)))
    lock = workdir_lock.WorkdirLock(str(tmp_path), stale_after=60)
    lock.acquire()
    lock.release()


def test_a_reused_pid_is_not_the_holder():
    me = dict(host=socket.gethostname(), pid=os.getpid(), heartbeat=0.0)
    assert workdir_lock.holder_is_alive(dict(me, pid_start=workdir_lock._process_start_time(os.getpid())))[0]
    alive, why = workdir_lock.holder_is_alive(dict(me, pid_start="1"))
    assert not alive and "no longer running" in why


def test_a_lock_taken_over_is_not_removed_by_the_old_holder(tmp_path):
    lock = workdir_lock.WorkdirLock(str(tmp_path), heartbeat_seconds=60)
    lock.acquire()
    (tmp_path / "train.lock").write_text(json.dumps(dict(host="h2", pid=2, since=1.0, heartbeat=time.time())))
    lock.release()
    assert json.loads((tmp_path / "train.lock").read_text())["host"] == "h2"
