"""RefineMask++ inside the detector (slow: each compiles the whole tiny detector, 1–3 min on
2 shared cores): the jitted train step of the tiny model gives finite BAR losses that decrease
over a few steps on one batch and prediction gives 112² masks; ``eval.py`` on a tiny run's
checkpoint writes COCO ``segm`` metrics. The head alone is tested in the default selection
(``tests/models/test_refinemask*.py``)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_refinemask_config  # noqa: E402

from msvision.train import data_setup, loop, sharding  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the tiny detector's train-step and predict compiles (~2.5 min on 2 loaded cores)
def test_train_step_losses_decrease_and_predict_gives_masks(tmp_path):
    config = tiny_refinemask_config.get_config(str(tmp_path / "shapes"))
    config.optim.lr = 1e-3  # a few steps on one batch must visibly fit it
    info = data_setup.dataset_info(config.data)
    trainer = loop.build_trainer(config, info)
    batch = sharding.shard_batch(next(data_setup.build_train_iterator(info, seed=0, shard_index=0, shard_count=1)),
                                 trainer.mesh)
    state, losses, masks_losses = trainer.state, [], []
    for _ in range(6):
        state, metrics = trainer.train_step(state, batch)
        metrics = jax.device_get(metrics)
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        losses.append(float(metrics["train/loss"]))
        masks_losses.append(float(metrics["train/loss_mask"]))
    for key in ("train/mask/loss_0", "train/mask/loss_3", "train/mask/band_cells_2", "train/seg/dropped_rois"):
        assert key in metrics
    assert float(metrics["train/mask/band_cells_3"]) > 0  # the BAR stages supervise a non-empty band
    assert masks_losses[0] > 0
    assert losses[-1] < losses[0] and masks_losses[-1] < masks_losses[0], (losses, masks_losses)

    dets = jax.device_get(trainer.predict_step(state["params"], state["rest"], batch))
    b, k = dets.valid.shape
    assert dets.masks.shape == (b, k, 112, 112) and dets.mask_boxes.shape == (b, k, 4)
    assert np.isfinite(dets.masks).all() and (dets.masks >= 0).all() and (dets.masks <= 1).all()
    assert not dets.masks[~dets.valid].any()
    scores = np.where(dets.valid, dets.scores, -np.inf)
    assert (np.diff(scores, axis=1)[dets.valid[:, 1:]] <= 1e-6).all()  # re-sorted by eq. 5.3 scores


@pytest.mark.slow  # a training run and eval.py in a subprocess (~3 min on 2 loaded cores)
def test_eval_py_writes_segm_metrics_for_a_tiny_run(tmp_path):
    shapes = tmp_path / "shapes"
    config = tiny_refinemask_config.get_config(str(shapes))
    config.train.num_steps = 2
    workdir = tmp_path / "run"
    loop.train(config, str(workdir))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"--config={ROOT / 'tests' / 'train' / 'tiny_refinemask_config.py'}",
         f"--workdir={workdir}", f"--config.data.synthetic.root={shapes}", "--config.train.num_steps=2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((workdir / "eval" / "metrics_2.json").read_text())
    assert "segm/AP" in metrics and "bbox/AP" in metrics and 0.0 <= metrics["segm/AP"] <= 1.0
    results = json.loads((workdir / "eval" / "results_2.json").read_text())
    assert results and all("segmentation" in r for r in results)
