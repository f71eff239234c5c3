"""A trained model restored for inference from a work directory's checkpoint."""

from __future__ import annotations

import os
from typing import Optional

import jax
import ml_collections
from flax import nnx

from msvision import checkpoint as checkpoint_lib
from msvision.models.build import build_model, resolve_model_config


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str, num_classes: int,
                          step: Optional[int] = None):
    """Restores only the model of a checkpoint (latest by default): ``(graphdef, params, rest, step)``.

    Needs neither the dataset nor the optimizer: the model is built abstractly
    (``nnx.eval_shape``) with ``num_classes`` classes and only ``params`` and
    ``rest`` are read from the checkpoint (onto the first local device); the
    optimizer state is not read. ``config`` is unchanged.

    Raises:
      NoCheckpointError: no checkpoint (or not ``step``), before anything is built.
    """
    step = checkpoint_lib.find_checkpoint_step(workdir, step)
    model_cfg = resolve_model_config(config.model)  # a new section
    model_cfg.num_classes = num_classes
    model_cfg.backbone.pretrained = ""  # the checkpoint holds the weights
    abstract_model = nnx.eval_shape(lambda: build_model(model_cfg, rngs=nnx.Rngs(config.seed)))
    graphdef, params, rest = nnx.split(abstract_model, nnx.Param, ...)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            dict(params=params, rest=rest))
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=0)
    try:
        step, state = ckpt.restore_subtree(abstract, step=step)
    finally:
        ckpt.close()
    return graphdef, state["params"], state["rest"], step
