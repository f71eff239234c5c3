"""Subprocess helper for test_sharding.py: one or more train steps on N forced CPU devices.

Usage: python run_one_step.py NUM_DEVICES DATA_ROOT OUT.npz STEPS
Writes the losses and the updated parameters (flattened) to OUT.npz.
"""

import os
import sys

import jax

num_devices, root, out, steps = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
jax.config.update("jax_num_cpu_devices", num_devices)  # before any device is used
jax.config.update("jax_platforms", "cpu")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import tiny_config  # noqa: E402
from msvision import config_sections  # noqa: E402
from msvision.train import data_setup, loop, sharding  # noqa: E402

assert len(jax.devices()) == num_devices, jax.devices()
config = config_sections.resolve_config(tiny_config.get_config(root))
info = data_setup.dataset_info(config.data)
trainer = loop.build_trainer(config, info)
assert trainer.mesh.devices.size == num_devices
it = data_setup.build_train_iterator(info, seed=config.seed, shard_index=0, shard_count=1)
state, losses = trainer.state, []
for _ in range(steps):
    batch = sharding.shard_batch(next(it), trainer.mesh)
    if num_devices > 1:
        assert len(batch.images.sharding.device_set) == num_devices
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["train/loss"]))
leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state["params"]))
np.savez(out, losses=np.asarray(losses), **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})
