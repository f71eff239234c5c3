"""Checkpoints are verified against their checksums before any restore; a damaged one is never used."""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msvision import checkpoint as checkpoint_lib
from msvision.train import loop

PARAMS_SHAPE, OPT_SHAPE = (64, 64), (160, 160)  # distinct sizes: the data file of each is found by size


def _state(seed):
    rng = np.random.default_rng(seed)  # random values: incompressible, so the files have the arrays' sizes
    return dict(step=jnp.asarray(seed, jnp.int32),
                params={"w": jnp.asarray(rng.normal(size=PARAMS_SHAPE).astype(np.float32))},
                opt_state={"mu": jnp.asarray(rng.normal(size=OPT_SHAPE).astype(np.float32))})


def _save(directory, steps=(1, 2), async_save=True):
    ckpt = checkpoint_lib.Checkpointer(str(directory), every_steps=1, async_save=async_save)
    for step in steps:
        ckpt.save(step, _state(step), meta=dict(num_steps=10))
    ckpt.close()


def _data_file(step_dir, array_shape):
    """The smallest file of the checkpoint's state big enough to hold the array: its data file
    (random values barely compress; orbax's OCDBT packs arrays into files of its choosing, one
    per array or both in one, so this file holds the array either way)."""
    nbytes = 4 * int(np.prod(array_shape))
    files = [os.path.join(root, f) for root, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
    return min((f for f in files if os.path.getsize(f) > 0.8 * nbytes), key=os.path.getsize)


def _damage(path, how):
    if how == "flipped bytes":
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 4)
            block = bytearray(f.read(4096))
            f.seek(os.path.getsize(path) // 4)
            f.write(bytes(b ^ 0xFF for b in block))
    elif how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
    else:
        os.remove(path)


def _abstract():
    return checkpoint_lib.abstract_like(_state(0))


@pytest.mark.parametrize("how,reason", [("flipped bytes", "does not match its checksum"),
                                        ("truncated", "is truncated"), ("missing", "is missing")])
@pytest.mark.parametrize("where", ["params", "opt_state"])
def test_damaged_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, where, how, reason, caplog):
    directory = tmp_path / "checkpoints"
    _save(directory)
    assert json.loads((directory / "2" / checkpoint_lib.MANIFEST).read_text())["files"]
    _damage(_data_file(str(directory / "2"), PARAMS_SHAPE if where == "params" else OPT_SHAPE), how)

    ckpt = checkpoint_lib.Checkpointer(str(directory), every_steps=0)
    with caplog.at_level(logging.WARNING):
        step, state, meta = ckpt.restore(_abstract())
    ckpt.close()
    assert step == 1 and meta["step"] == 1
    for key in ("params", "opt_state"):
        for got, want in zip(jax.tree.leaves(state[key]), jax.tree.leaves(_state(1)[key])):
            np.testing.assert_array_equal(got, want)
    assert [s.step for s in ckpt.skipped] == [2] and reason in ckpt.skipped[0].reason
    assert f"skipping checkpoint 2 in {directory}" in caplog.text and reason in caplog.text
    # Asked for explicitly, the damaged step is refused, not restored.
    ckpt = checkpoint_lib.Checkpointer(str(directory), every_steps=0)
    with pytest.raises(checkpoint_lib.NoCheckpointError, match=f"checkpoint 2 in {directory} cannot be used"):
        ckpt.restore(_abstract(), step=2)
    ckpt.close()
    # The same choice for evaluation, prediction and export, before anything is built.
    assert checkpoint_lib.find_checkpoint_step(str(tmp_path)) == 1


def test_no_intact_checkpoint_stops_naming_the_directory(tmp_path):
    directory = tmp_path / "checkpoints"
    _save(directory)
    for step in (1, 2):
        _damage(_data_file(str(directory / str(step)), OPT_SHAPE), "truncated")
    ckpt = checkpoint_lib.Checkpointer(str(directory), every_steps=0)
    with pytest.raises(checkpoint_lib.NoCheckpointError, match=f"no intact checkpoint in {directory}: step 2: .*step 1"):
        ckpt.restore(_abstract())
    ckpt.close()
    with pytest.raises(loop.NoCheckpointError, match="no intact checkpoint"):
        checkpoint_lib.find_checkpoint_step(str(tmp_path))


def test_checkpoint_without_checksums_is_a_save_that_never_finished(tmp_path):
    directory = tmp_path / "checkpoints"
    _save(directory, async_save=False)
    os.remove(directory / "2" / checkpoint_lib.MANIFEST)
    step, skipped = checkpoint_lib.select_checkpoint(str(directory))
    assert step == 1 and "save never finished" in skipped[0].reason and skipped[0].unfinished


def test_checksums_stay_valid_after_later_saves_and_deletions(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt = checkpoint_lib.Checkpointer(str(directory), every_steps=1, keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step))
    ckpt.close()
    assert checkpoint_lib.checkpoint_steps(str(directory)) == [2, 3]
    assert all(checkpoint_lib.verify_checkpoint(str(directory), s) is None for s in (2, 3))


def test_resume_sets_damaged_newer_checkpoints_aside_and_saves_them_again(tmp_path):
    directory = tmp_path / "checkpoints"
    _save(directory, steps=(1, 2, 3))
    _damage(_data_file(str(directory / "3"), PARAMS_SHAPE), "flipped bytes")
    ckpt = checkpoint_lib.Checkpointer(str(directory), every_steps=1)
    assert loop.select_resume_step(ckpt) == 2
    assert [s.step for s in ckpt.skipped] == [3]
    assert checkpoint_lib.checkpoint_steps(str(directory)) == [1, 2]
    assert [d.split("-")[0] for d in os.listdir(directory / checkpoint_lib.SKIPPED_DIR)] == ["3"]
    step, state, _ = ckpt.restore(_abstract(), step=2)
    ckpt.save(3, _state(3))  # the step moved aside can be written again
    assert ckpt.latest_intact_step() == 3
    ckpt.close()


def test_no_checkpoint_is_a_fresh_start_and_none_intact_stops(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt = checkpoint_lib.Checkpointer(str(directory), every_steps=1)
    assert loop.select_resume_step(ckpt) is None
    assert ckpt.latest_intact_step() is None
    ckpt.save(1, _state(1))
    ckpt.wait()
    os.remove(_data_file(str(directory / "1"), PARAMS_SHAPE))
    with pytest.raises(loop.NoCheckpointError, match=f"no intact checkpoint in {directory}"):
        loop.select_resume_step(ckpt)
    ckpt.close()


def test_a_run_killed_during_its_first_save_starts_afresh(tmp_path, caplog):
    """The only checkpoint never got its checksums (the run was killed after orbax renamed
    the folder, before the manifest): nothing complete is lost, so training starts from step
    0 with the unfinished save set aside, instead of refusing to start."""
    directory = tmp_path / "checkpoints"
    ckpt = checkpoint_lib.Checkpointer(str(directory), every_steps=1)
    ckpt.save(4, _state(4))
    ckpt.wait()
    os.remove(directory / "4" / checkpoint_lib.MANIFEST)
    with caplog.at_level(logging.WARNING):
        assert loop.select_resume_step(ckpt) is None
    assert "starting from step 0" in caplog.text
    assert [s.step for s in ckpt.skipped] == [4] and ckpt.skipped[0].unfinished
    assert checkpoint_lib.checkpoint_steps(str(directory)) == []
    assert [d.split("-")[0] for d in os.listdir(directory / checkpoint_lib.SKIPPED_DIR)] == ["4"]
    ckpt.save(4, _state(4))  # the step is written again
    ckpt.wait()
    assert checkpoint_lib.select_checkpoint(str(directory)) == (4, [])
    ckpt.close()


def _launch(workdir, mode, **popen):
    script = os.path.join(os.path.dirname(__file__), "checkpoint_processes.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_NUM_CPU_DEVICES"):
        env.pop(var, None)
    command = [sys.executable, "-m", "msvision.launch", "--num-processes=2", "--", script, str(workdir), mode]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow  # 3 launches of 2 JAX processes: ~35 s
def test_two_processes_share_the_lock_and_the_checkpoint_choice(tmp_path):
    # Process 0 takes the lock and picks the checkpoint; process 1 follows (no hang, no other choice).
    proc = _launch(tmp_path, "save")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    state_dir = tmp_path / "checkpoints" / "2" / "state"
    largest = max((os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs), key=os.path.getsize)
    _damage(largest, "truncated")
    proc = _launch(tmp_path, "resume")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "[p0] resumed 1 [2]" in out and "[p1] resumed 1 []" in out
    assert not os.path.exists(tmp_path / "train.lock")

    holder = _launch(tmp_path, "hold")
    try:
        while "holding" not in (line := holder.stdout.readline()):
            assert line, holder.stderr.read()[-3000:]
        proc = _launch(tmp_path, "resume")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode != 0 and "resumed" not in out
        # Both processes of the second run refuse, naming the holder.
        assert err.count("is in use by another training run") >= 2, err[-3000:]
    finally:
        (tmp_path / "stop").touch()
        holder.communicate(timeout=300)
    assert holder.returncode == 0 and not os.path.exists(tmp_path / "train.lock")


@pytest.mark.slow  # two tiny training runs: ~1 min
def test_training_resumes_from_the_newest_intact_checkpoint_and_counts_the_skipped(tmp_path, caplog):
    sys.path.insert(0, os.path.dirname(__file__))
    import tiny_config

    from msvision.train.metrics import read_metrics

    workdir = str(tmp_path / "run")
    config = tiny_config.get_config(str(tmp_path / "shapes"))
    loop.train(config, workdir)  # 8 steps, checkpoints 4 and 8
    directory = os.path.join(workdir, "checkpoints")
    step_dir = os.path.join(directory, "8")
    largest = max((os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs), key=os.path.getsize)
    _damage(largest, "flipped bytes")  # a reported failure: 4 KiB flipped in the newest checkpoint's largest file
    config = tiny_config.get_config(str(tmp_path / "shapes"))
    config.train.num_steps = 12
    with caplog.at_level(logging.INFO):
        loop.train(config, workdir)
    assert f"skipping checkpoint 8 in {directory}: file " in caplog.text
    assert "restored checkpoint 4" in caplog.text and "restored checkpoint 8" not in caplog.text
    rows = [r for r in read_metrics(workdir) if r["step"] > 8]
    assert rows and all(r["checkpoint/skipped"] == 1 for r in rows)
    assert checkpoint_lib.checkpoint_steps(directory) == [4, 8, 12]  # 8 written again after the resume
    assert [d.split("-")[0] for d in os.listdir(os.path.join(directory, checkpoint_lib.SKIPPED_DIR))] == ["8"]
    assert checkpoint_lib.select_checkpoint(directory) == (12, [])

    # Evaluation passes over a damaged newest checkpoint too, and counts it in its metrics.
    step_dir = os.path.join(directory, "12")
    largest = max((os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs), key=os.path.getsize)
    _damage(largest, "flipped bytes")
    trainer, state, step, skipped = loop.restore_for_eval(config, workdir)
    assert step == 8 and [s.step for s in skipped] == [12]
    metrics = loop.evaluate_state(trainer, state, workdir, step, extra_metrics={"checkpoint/skipped": len(skipped)})
    assert metrics["eval/checkpoint/skipped"] == 1
    with open(os.path.join(workdir, "eval", "metrics_8.json")) as f:
        assert json.load(f)["checkpoint/skipped"] == 1
