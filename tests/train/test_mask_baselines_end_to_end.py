"""Mask R-CNN++ and PointRend++ inside the tiny detector (slow: a detector+head compile each):
a jitted train step lowers the mask losses over a few steps on one batch, and a tiny training
run evaluates ``segm`` metrics."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
import tiny_effseg_config  # noqa: E402

from msvision.analysis.cost import synthetic_batch  # noqa: E402
from msvision.models.build import build_model, module_config  # noqa: E402
from msvision.train import loop  # noqa: E402
from msvision.train.metrics import read_metrics  # noqa: E402

# Tiny versions of the heads on the tiny P3–P7 pyramid (P3 its finest level).
HEADS = {
    "maskrcnn": dict(roi_levels=(3, 5), roi_convs=2, max_train_rois=6),
    "pointrend": dict(point_level=3, roi_convs=2, point_hidden=16, max_train_rois=6, train_points=28,
                      subdivision_points=100),
}


def tiny_config(name, root="/tmp/msvision_tiny_shapes"):
    config = tiny_effseg_config.get_config(root)
    seg = module_config("seg_head", name)
    seg.update(HEADS[name])
    config.model.seg_head = seg
    return config


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEADS))
def test_jit_train_step_lowers_the_mask_losses(name):
    config = tiny_config(name)
    config.model.num_classes = 3
    # Many queries for 64² images: some are matched (positive) from the first step.
    config.model.head.selector.num_queries = 300
    graphdef, params, rest = nnx.split(build_model(config.model, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = optax.adam(2e-3)
    state = dict(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                 rng=jax.random.PRNGKey(0))
    step = jax.jit(loop.make_train_step(graphdef, tx, {}))
    batch = synthetic_batch(2, 64, 3, 3, seed=1, with_masks=True)
    history = []
    for _ in range(8):
        state, metrics = step(state, batch)
        history.append({k: float(v) for k, v in metrics.items()})
    keys = ["train/loss_mask"] + (["train/loss_mask_point"] if name == "pointrend" else [])
    for row in history:
        assert all(np.isfinite(row[k]) for k in keys + ["train/loss"])
        assert row["train/seg/rois_per_image"] > 0
    for k in keys + ["train/loss"]:
        print(k, [round(row[k], 3) for row in history])
        assert history[-1][k] < 0.95 * history[0][k], (k, [row[k] for row in history])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEADS))
def test_tiny_run_trains_and_evaluates_masks(tmp_path, name):
    config = tiny_config(name, str(tmp_path / "shapes"))
    config.train.num_steps = 4
    config.train.eval_at_end = True
    workdir = str(tmp_path / "run")
    final = loop.train(config, workdir)
    rows = [r for r in read_metrics(workdir) if "train/loss" in r]
    assert rows[-1]["train/loss_mask"] >= 0 and "train/seg/dropped_rois" in rows[-1]
    with open(os.path.join(workdir, "eval", "metrics_4.json")) as f:
        metrics = json.load(f)
    assert "segm/AP" in metrics and "bbox/AP" in metrics
    assert final["eval/segm/AP"] == metrics["segm/AP"]
    with open(os.path.join(workdir, "eval", "results_4.json")) as f:
        results = json.load(f)
    assert results and all("segmentation" in r for r in results)
