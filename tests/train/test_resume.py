"""Crash safety: a run killed with SIGKILL and restarted ends bitwise equal to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TINY = os.path.join(os.path.dirname(__file__), "tiny_config.py")


def _command(workdir, data_root, num_steps):
    return [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        f"--config={TINY}:{data_root}",
        f"--workdir={workdir}",
        f"--config.train.num_steps={num_steps}",
        "--config.train.checkpoint_every=4",
        "--config.train.log_every=4",
    ]


def _finished_steps(workdir):
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def _final_params(workdir, step):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(restored)}


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    data_root = str(tmp_path / "shapes")
    num_steps = 24
    reference = str(tmp_path / "reference")
    subprocess.run(_command(reference, data_root, num_steps), check=True, env=env, timeout=600, cwd=ROOT)
    assert _finished_steps(reference)[-1] == num_steps

    resumed = str(tmp_path / "resumed")
    proc = subprocess.Popen(_command(resumed, data_root, num_steps), env=env, cwd=ROOT)
    deadline = time.time() + 600
    while not _finished_steps(resumed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _finished_steps(resumed)
    assert killed_at and killed_at[-1] < num_steps, f"the run was not killed mid-training: {killed_at}"

    subprocess.run(_command(resumed, data_root, num_steps), check=True, env=env, timeout=600, cwd=ROOT)
    assert _finished_steps(resumed)[-1] == num_steps

    want, got = _final_params(reference, num_steps), _final_params(resumed, num_steps)
    assert want.keys() == got.keys() and len(want) > 10
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # The restarted run logged the steps after the checkpoint it resumed from.
    from msvision.train.metrics import read_metrics

    steps_logged = [row["step"] for row in read_metrics(resumed)]
    assert steps_logged[-1] == num_steps
