"""The detector shipped for the chapter 5 comparison on large objects
(``benchmarks/weights/large_detector``, the ``large_*`` configs' ``train.init_from``) is
intact and still fits the model those configs build: every detector parameter is in it
with its shape, so no head run silently starts from a partly random detector."""

import json
import pathlib

import jax
import numpy as np
from flax import nnx

from msvision.config_sections import load_config
from msvision.models.build import build_model
from msvision import checkpoint as checkpoint_lib
from msvision.checkpoint import path_name

ROOT = pathlib.Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "benchmarks" / "weights" / "large_detector"


def test_published_detector_is_intact_and_matches_the_large_configs():
    config = load_config(str(ROOT / "configs" / "effseg" / "large_effseg.py"), [])
    assert (ROOT / config.train.init_from).resolve() == WEIGHTS.resolve()
    directory = str(WEIGHTS / "checkpoints")
    step, skipped = checkpoint_lib.select_checkpoint(directory)  # every file against its checksum
    assert step == 2000 and skipped == []
    classes = json.loads((WEIGHTS / "dataset.json").read_text())["class_names"]
    with config.unlocked():
        config.model.num_classes = len(classes)
        config.model.backbone.pretrained = ""
    abstract = nnx.eval_shape(lambda: build_model(config.model, rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    saved = checkpoint_lib.Checkpointer(directory, every_steps=0).state_metadata(step)["params"]
    name = lambda path: path_name(path).removesuffix("/value")  # noqa: E731 - nnx.State leaves vs pure dicts
    for part in config.train.init_parts:
        mine = {name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(
            nnx.to_pure_dict(params[part]))[0]}
        theirs = {name(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(saved[part])[0]}
        assert mine == theirs, f"{part}: the published detector no longer fits the model"
    assert sum(int(np.prod(s)) for s in mine.values()) > 0
