"""``msvision.train.publish``: a run's model alone, verified, usable wherever a model is read."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from inference_helpers import TINY_EFFSEG_CONFIG, make_inference_workdir, random_model_state, tiny_inference_config
from msvision import checkpoint as checkpoint_lib
from msvision.inference.restore import restore_for_inference
from msvision.train.loop import initialize_from
from msvision.train.publish import publish


def _size(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def test_published_weights_hold_the_model_only_and_serve_init_and_inference(tmp_path):
    _, source, data_root = make_inference_workdir(tmp_path, TINY_EFFSEG_CONFIG, (), seed=0)
    config = tiny_inference_config(data_root, TINY_EFFSEG_CONFIG, ())
    saved = random_model_state(config, 6, seed=0)[1]
    out = str(tmp_path / "weights")
    assert publish(source, out) == 5

    step_dir = os.path.join(out, "checkpoints", "5")
    assert checkpoint_lib.select_checkpoint(os.path.join(out, "checkpoints")) == (5, [])  # checksums written
    tree = checkpoint_lib.Checkpointer(os.path.join(out, "checkpoints"), every_steps=0).state_metadata(5)
    assert sorted(tree) == ["params", "rest"]  # no optimizer state, step or RNG
    # AdamW's two moments are gone: well under half the training checkpoint.
    assert _size(step_dir) < 0.5 * _size(os.path.join(source, "checkpoints", "5"))
    assert json.load(open(os.path.join(out, "dataset.json"))) == json.load(open(os.path.join(source, "dataset.json")))
    for root, _, files in os.walk(out):  # nothing names the machine it was written on
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert str(tmp_path).encode() not in f.read(), os.path.join(root, name)

    fresh = jax.device_put(random_model_state(config, 6, seed=1)[1])
    state = initialize_from(dict(params=fresh), out, ("backbone", "neck", "head", "seg_head"))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state["params"]), saved)
    _, params, _, step = restore_for_inference(tiny_inference_config(data_root, TINY_EFFSEG_CONFIG, ()), out, 6)
    assert step == 5
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), saved)


def test_damaged_weights_are_refused_and_publishing_never_overwrites(tmp_path):
    _, source, data_root = make_inference_workdir(tmp_path, TINY_EFFSEG_CONFIG, (), seed=0)
    out = str(tmp_path / "weights")
    publish(source, out)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        publish(source, out)
    step_dir = os.path.join(out, "checkpoints", "5")
    largest = max((os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs), key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.seek(os.path.getsize(largest) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    config = tiny_inference_config(data_root, TINY_EFFSEG_CONFIG, ())
    fresh = jax.device_put(random_model_state(config, 6, seed=1)[1])
    with pytest.raises(checkpoint_lib.NoCheckpointError, match="no intact checkpoint|checksum|changed"):
        initialize_from(dict(params=fresh), out, ("backbone",))


def test_command_line_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "msvision.train.publish", f"--workdir={tmp_path / 'none'}",
                           f"--out={tmp_path / 'w'}"], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no checkpoint to publish" in proc.stderr and str(tmp_path / "none") in proc.stderr
