"""Data parallelism: the same train steps on 1 and on 4 forced CPU devices agree."""

import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(__file__)


def _run(num_devices, root, out, steps=2):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(
        [sys.executable, os.path.join(HERE, "run_one_step.py"), str(num_devices), root, out, str(steps)],
        check=True,
        env=env,
        timeout=600,
    )
    return dict(np.load(out))


def test_one_and_four_devices_give_the_same_steps(tmp_path):
    root = str(tmp_path / "shapes")
    one = _run(1, root, str(tmp_path / "one.npz"))
    four = _run(4, root, str(tmp_path / "four.npz"))
    np.testing.assert_allclose(one.pop("losses"), four.pop("losses"), rtol=2e-5)
    assert one.keys() == four.keys() and len(one) > 10
    for key in one:
        # One Adam step moves each weight by about lr = 1e-3; disagreement must be far below it.
        np.testing.assert_allclose(one[key], four[key], rtol=0, atol=2e-5, err_msg=key)


def test_batch_size_must_divide_device_count():

    from msvision.train import sharding

    class _FakeMesh:
        devices = np.empty((4,))

    with pytest.raises(ValueError, match="multiple of the number of devices"):
        sharding.check_batch_size(6, _FakeMesh())
    assert sharding.check_batch_size(8, _FakeMesh()) == 8
