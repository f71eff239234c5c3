"""Checkpoints are verified against their checksums before any restore; a damaged one is never used."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msvision.train import checkpoint as checkpoint_lib
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
            f.seek(os.path.getsize(path) // 2)
            block = bytearray(f.read(64))
            f.seek(os.path.getsize(path) // 2)
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
    assert loop.find_checkpoint_step(str(tmp_path)) == 1


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
        loop.find_checkpoint_step(str(tmp_path))


def test_checkpoint_without_checksums_is_incomplete_unless_an_older_version_wrote_it(tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    _save(directory, async_save=False)
    assert json.loads((directory / checkpoint_lib.UNVERIFIED_STEPS).read_text()) == {"steps": []}
    # This version saved here: step 2 without checksums is a save that never finished.
    os.remove(directory / "2" / checkpoint_lib.MANIFEST)
    step, skipped = checkpoint_lib.select_checkpoint(str(directory))
    assert step == 1 and "save never finished" in skipped[0].reason

    # A directory of an older version (no checksums anywhere): accepted with a warning.
    os.remove(directory / "1" / checkpoint_lib.MANIFEST)
    os.remove(directory / checkpoint_lib.UNVERIFIED_STEPS)
    ckpt = checkpoint_lib.Checkpointer(str(directory), every_steps=1)
    with caplog.at_level(logging.WARNING):
        step, state, _ = ckpt.restore(_abstract())
    assert step == 2 and "older version without checksums" in caplog.text
    # Resumed and saved by this version: the old steps stay accepted, the new one is checked.
    ckpt.save(3, _state(3))
    ckpt.close()
    assert json.loads((directory / checkpoint_lib.UNVERIFIED_STEPS).read_text()) == {"steps": [1, 2]}
    assert checkpoint_lib.verify_checkpoint(str(directory), 2, {1, 2}) is None
    assert (directory / "3" / checkpoint_lib.MANIFEST).exists()
    assert checkpoint_lib.select_checkpoint(str(directory)) == (3, [])


def test_checksums_stay_valid_after_later_saves_and_deletions(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt = checkpoint_lib.Checkpointer(str(directory), every_steps=1, keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step))
    ckpt.close()
    assert checkpoint_lib.checkpoint_steps(str(directory)) == [2, 3]
    assert all(checkpoint_lib.verify_checkpoint(str(directory), s, set()) is None for s in (2, 3))


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
