"""Helpers of the prediction and export tests: a work directory laid out as ``train.py`` leaves it."""

import os
from pathlib import Path

import numpy as np

TESTS = Path(__file__).parent
COCO_MINI = TESTS / "data" / "coco_mini"

# Non-contiguous category ids, as in COCO: label k <-> CATEGORY_IDS[k].
CLASS_NAMES = ("circle", "triangle", "rectangle", "star", "hexagon", "cross")
CATEGORY_IDS = (3, 7, 11, 42, 64, 90)
TINY_CONFIG = TESTS / "train" / "tiny_config.py"
TINY_EFFSEG_CONFIG = TESTS / "train" / "tiny_effseg_config.py"  # FQDet + EffSeg: masks
TINY_PANOPTIC_CONFIG = TESTS / "train" / "tiny_panoptic_config.py"  # the same, panoptic
# Every valid detection is kept (the weights below are untrained), max_detections of them.
CONFIG_OVERRIDES = ("--config.model.head.inference.score_threshold=0.0",)
# A panoptic class list: the six things above and four stuff classes (COCO-like ids > 91).
PANOPTIC_CLASS_NAMES = CLASS_NAMES + ("sky", "grass", "water", "sand")
PANOPTIC_CATEGORY_IDS = CATEGORY_IDS + (100, 125, 150, 184)
PANOPTIC_IS_THING = (True,) * len(CLASS_NAMES) + (False,) * 4


def tiny_inference_config(data_root: str, config_file=TINY_CONFIG, overrides=CONFIG_OVERRIDES):
    """The tiny test config (``tests/train/tiny_config.py`` by default) with ``overrides``."""
    from msvision import config_sections

    return config_sections.load_config(f"{config_file}:{data_root}", overrides)


def random_model_state(config, num_classes: int, seed: int = 0):
    """``(graphdef, params, rest)`` of ``config.model`` with He-normal random weights, drawn in numpy.

    Kernels ~ N(0, 2 / fan_in), biases 0, normalisation scales 1, other
    non-parameter state 1. Unlike the real initialisation (one jitted function:
    ~25 s of compilation on a 2-core CPU for the tiny model) this costs nothing,
    and the scores vary strongly from image to image (at the real
    initialisation every score is ≈ the 0.01 prior, so detections tie).
    """
    import jax
    import numpy as np
    from flax import nnx

    from msvision.models.build import build_model

    model_cfg = config.model.copy_and_resolve_references()  # the caller's config is unchanged
    model_cfg.num_classes = num_classes
    abstract = nnx.eval_shape(lambda: build_model(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = int(np.prod(x.shape[:-1]))
            return (rng.standard_normal(x.shape) * np.sqrt(2.0 / fan_in)).astype(x.dtype)
        if "scale" in name:
            return np.ones(x.shape, x.dtype)
        return np.zeros(x.shape, x.dtype)

    params = jax.tree_util.tree_map_with_path(draw, params)
    rest = jax.tree.map(lambda x: np.ones(x.shape, x.dtype), rest)
    return graphdef, params, rest


def make_inference_workdir(base: Path, config_file=TINY_CONFIG, overrides=CONFIG_OVERRIDES,
                           class_names=CLASS_NAMES, category_ids=CATEGORY_IDS,
                           label_is_thing=None, seed: int = 0) -> tuple[str, str, str]:
    """``(config_file_arg, workdir, data_root)``: a work directory laid out as ``train.py`` leaves it.

    ``WORKDIR/dataset.json`` (the class list; ``label_is_thing`` as a panoptic training
    source gives it) and an orbax checkpoint (step 5) of the full train
    state (params, rest, AdamW state, step, RNG) of the tiny config's model (``config_file``
    with ``overrides``) with the classes given (default: 6) and the weights of
    :func:`random_model_state` (no training step: it would cost a minute of
    compilation). The config's dataset root ``data_root`` does not exist: prediction
    must not need it.
    """
    import jax
    import jax.numpy as jnp

    from msvision import checkpoint as checkpoint_lib
    from msvision.data.classes import ClassList, write_dataset_file
    from msvision.train import optimizer as optimizer_lib

    workdir, data_root = str(base / "run"), str(base / "no_data")
    config = tiny_inference_config(data_root, config_file, overrides)
    _, params, rest = random_model_state(config, len(class_names), seed)
    params = jax.tree.map(jnp.asarray, params)
    tx, _ = optimizer_lib.build_optimizer(config.optim, params, 10)
    state = dict(step=jnp.asarray(5, jnp.int32), params=params, rest=jax.tree.map(jnp.asarray, rest),
                 opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    os.makedirs(workdir)
    is_thing = None if label_is_thing is None else tuple(bool(t) for t in label_is_thing)
    write_dataset_file(workdir, ClassList(tuple(class_names), tuple(category_ids), is_thing), 24)
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=0, async_save=False)
    ckpt.save(5, state, meta=dict(num_steps=5))
    ckpt.close()
    return f"{config_file}:{data_root}", workdir, data_root


def assert_same_detections(a: list[dict], b: list[dict], box_atol: float = 0.02, score_atol: float = 1e-4,
                           box_scale: float = 1.0):
    """Same detections in the same order; ``b``'s boxes are ``box_scale`` × ``a``'s."""
    assert len(a) == len(b) > 0
    for da, db in zip(a, b):
        assert (da["category_id"], da["category"]) == (db["category_id"], db["category"])
        assert abs(da["score"] - db["score"]) <= score_atol, (da, db)
        np.testing.assert_allclose(np.asarray(da["bbox"]) * box_scale, db["bbox"], atol=box_atol)


def coco_mini_images(count: int) -> list[str]:
    """Paths of the first ``count`` coco_mini fixture JPEGs (sorted by name)."""
    folder = COCO_MINI / "train2017"
    return [str(folder / f) for f in sorted(os.listdir(folder))[:count]]
