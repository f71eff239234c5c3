"""A non-finite loss stops training with a clear error and keeps the last good checkpoint."""

import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_config  # noqa: E402

from msvision import checkpoint as checkpoint_lib  # noqa: E402
from msvision.data.classes import read_class_list  # noqa: E402
from msvision.train import loop  # noqa: E402


def _params_at(workdir, step):
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=0)
    import orbax.checkpoint as ocp

    path = os.path.join(ckpt.directory, str(step), "state")
    ckpt.close()
    restored = ocp.StandardCheckpointer().restore(path)
    return [np.asarray(x) for x in jax.tree.leaves(restored["params"])]


@pytest.mark.slow  # two training runs (the second recompiles for its learning rate): ~1 min
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_config.get_config(str(tmp_path / "shapes"))
    config.train.num_steps = 4
    config.train.checkpoint_every = 4
    config.train.log_every = 2
    loop.train(config, workdir)
    good = _params_at(workdir, 4)
    assert all(np.isfinite(x).all() for x in good)
    # The run's class list, read by evaluation, prediction and export (one file: dataset.json).
    assert read_class_list(workdir).label_to_category == (1, 2, 3, 4, 5, 6)
    assert not os.path.exists(os.path.join(workdir, "classes.json"))

    # Resume with an absurd learning rate: the weights blow up and the loss becomes non-finite.
    config = tiny_config.get_config(str(tmp_path / "shapes"))
    config.train.num_steps = 12
    config.train.checkpoint_every = 4
    config.train.log_every = 2
    config.optim.lr = config.optim.backbone_lr = 1e35
    with pytest.raises(loop.NonFiniteLossError, match="last verified checkpoint is step 4"):
        loop.train(config, workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [4]
    for before, after in zip(good, _params_at(workdir, 4)):
        np.testing.assert_array_equal(before, after)
