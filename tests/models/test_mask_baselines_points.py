"""Mask R-CNN++ and PointRend++ pieces (thesis §5.4.1): point selection and subdivision against
numpy loops written from the definitions, crop-resize and point targets against numpy, the
transposed convolution against its definition."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msvision.data.box_masks import box_frame_masks
from msvision.models.heads.mask_baselines.modules import Deconv2x
from msvision.models.heads.mask_baselines.points import (overwrite_points, point_sample, select_uncertain_points,
                                                         subdivision_points, uncertain_points_with_randomness)
from msvision.models.heads.mask_baselines.targets import crop_resize_targets, point_targets
from msvision.structures import Batch

sys.path.insert(0, os.path.dirname(__file__))
from mask_baselines_oracles import (CANVAS, IMAGE_SIZES, np_crop_resize, np_grid_sample, np_upsample2x,  # noqa: E402
                                    target_case)


# --- points ------------------------------------------------------------------------------------


def test_uncertain_point_selection_matches_numpy():
    """The k candidates of highest -|logit|, the logit read bilinearly at the candidate in the RoI's
    [0, 1]² frame (grid_sample, align_corners=False), most uncertain first."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 7)).astype(np.float32) * 3
    candidates = rng.uniform(-0.05, 1.05, (3, 30, 2)).astype(np.float32)  # a few outside: zero padding
    chosen = np.asarray(jax.jit(select_uncertain_points, static_argnums=2)(jnp.asarray(logits),
                                                                           jnp.asarray(candidates), 9))
    for n in range(3):
        values = np_grid_sample(logits[n].astype(np.float64), candidates[n, :, 0], candidates[n, :, 1])
        order = np.argsort(np.abs(values), kind="stable")[:9]
        np.testing.assert_array_equal(chosen[n], candidates[n, order])
    np.testing.assert_allclose(np.asarray(point_sample(jnp.asarray(logits), jnp.asarray(candidates)))[1],
                               np_grid_sample(logits[1].astype(np.float64), candidates[1, :, 0], candidates[1, :, 1]),
                               rtol=1e-5, atol=1e-5)


def test_uncertain_points_with_randomness_oversample_and_importance():
    """196 points: the ⌊0.75·196⌋ = 147 most uncertain of 3·196 uniform candidates, then 49
    uniform points (mmdet get_uncertain_point_coords_with_randomness)."""
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 28, 28)), jnp.float32)
    key = jax.random.PRNGKey(3)
    points = np.asarray(uncertain_points_with_randomness(key, logits, 196, 3.0, 0.75))
    assert points.shape == (2, 196, 2) and points.min() >= 0 and points.max() <= 1
    key_candidates, key_random = jax.random.split(key)
    candidates = np.asarray(jax.random.uniform(key_candidates, (2, 588, 2)))
    for n in range(2):
        values = np_grid_sample(np.asarray(logits[n], np.float64), candidates[n, :, 0], candidates[n, :, 1])
        np.testing.assert_array_equal(points[n, :147], candidates[n, np.argsort(np.abs(values), kind="stable")[:147]])
    np.testing.assert_array_equal(points[:, 147:], np.asarray(jax.random.uniform(key_random, (2, 49, 2))))


def test_subdivision_step_matches_numpy():
    """×2 bilinear upsampling, the P cells of highest -|logit| as flat indices and cell centres,
    those cells overwritten."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 14, 14)).astype(np.float32) * 2
    new_values = rng.normal(size=(2, 50)).astype(np.float32)

    @jax.jit
    def step(x, values):
        from msvision.models.heads.roi_mask.postprocess import upsample2x

        up = upsample2x(x)
        index, points = subdivision_points(up, 50)
        return up, index, points, overwrite_points(up, index, values)

    up, index, points, refined = (np.asarray(v) for v in step(jnp.asarray(logits), jnp.asarray(new_values)))
    for n in range(2):
        expected_up = np_upsample2x(logits[n].astype(np.float64))
        np.testing.assert_allclose(up[n], expected_up, rtol=1e-5, atol=1e-5)
        expected_index = np.argsort(np.abs(up[n]).reshape(-1), kind="stable")[:50]
        np.testing.assert_array_equal(index[n], expected_index)
        rows, cols = np.divmod(expected_index, 28)
        np.testing.assert_allclose(points[n], np.stack([(cols + 0.5) / 28, (rows + 0.5) / 28], -1), rtol=1e-6)
        expected = up[n].copy().reshape(-1)
        expected[expected_index] = new_values[n]
        np.testing.assert_array_equal(refined[n].reshape(-1), expected)


def test_deconv_matches_transposed_convolution_definition():
    """``ConvTranspose2d(k=2, s=2)``: out[2i+a, 2j+b, o] = Σ_c x[i, j, c] w[a, b, c, o] + bias[o]."""
    layer = Deconv2x(3, 4, rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.arange(4, dtype=jnp.float32)
    x = np.random.default_rng(3).normal(size=(2, 3, 5, 3)).astype(np.float32)
    y = np.asarray(layer(jnp.asarray(x)))
    w = np.asarray(layer.kernel[...])
    expected = np.zeros((2, 6, 10, 4))
    for i in range(3):
        for j in range(5):
            for a in range(2):
                for b in range(2):
                    expected[:, 2 * i + a, 2 * j + b] = x[:, i, j] @ w[a, b] + np.arange(4)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


# --- targets -----------------------------------------------------------------------------------


def test_crop_resize_targets_match_numpy():
    batch, boxes, gt = target_case()
    targets = np.asarray(jax.jit(crop_resize_targets, static_argnums=3)(batch, jnp.asarray(boxes), jnp.asarray(gt),
                                                                        28))
    assert targets.shape == (2, 3, 28, 28) and targets.dtype == bool
    for b in range(2):
        for r in range(3):
            v = np_crop_resize(batch.masks[b, gt[b, r]].astype(np.float64), boxes[b, r])
            decided = np.abs(v - 0.5) > 1e-5  # float32 rounding at exactly 0.5
            np.testing.assert_array_equal(targets[b, r][decided], (v >= 0.5)[decided])
            assert targets[b, r].any() and decided.mean() > 0.99


def test_crop_resize_target_is_foreground_at_exactly_half():
    """mmdet binarises the RoIAlign average with >= 0.5: a cell whose 8 × 8 samples straddle the
    mask's edge symmetrically (v = 0.5 exactly, 2-pixel cells centred on the edge) is foreground."""
    masks = np.zeros((1, 1, 80, 80), bool)
    masks[0, 0, :, :20] = True  # columns 0..19: the edge at x = 20 (pixel centres at +0.5)
    batch = Batch(images=np.zeros((1, 80, 80, 3), np.uint8), image_sizes=np.array([[80, 80]], np.int32),
                  orig_sizes=np.array([[80, 80]], np.int32), image_ids=np.zeros(1, np.int32),
                  boxes=np.zeros((1, 1, 4), np.float32), labels=np.zeros((1, 1), np.int32),
                  valid=np.ones((1, 1), bool), is_crowd=np.zeros((1, 1), bool), masks=masks)
    box = np.array([[[13.0, 10.0, 69.0, 66.0]]], np.float32)  # 2-pixel cells; cell 3 spans x in [19, 21]
    targets = np.asarray(crop_resize_targets(batch, jnp.asarray(box), jnp.zeros((1, 1), jnp.int32), 28))[0, 0]
    v = np_crop_resize(masks[0, 0].astype(np.float64), box[0, 0])
    np.testing.assert_allclose(v[:, 3], 0.5)
    assert targets[:, :4].all() and not targets[:, 4:].any()


def test_point_targets_match_numpy_and_box_frame_masks():
    """The mask read bilinearly (grid_sample) at the points; box-frame grids whose cells are the
    mask's pixels give the same values."""
    batch, boxes, gt = target_case()
    points = np.random.default_rng(4).uniform(-0.1, 1.1, (2, 3, 40, 2)).astype(np.float32)
    values = np.asarray(jax.jit(point_targets)(batch, jnp.asarray(boxes), jnp.asarray(gt), jnp.asarray(points)))
    for b in range(2):
        for r in range(3):
            x0, y0, x1, y1 = boxes[b, r].astype(np.float64)
            px = (x0 + points[b, r, :, 0] * (x1 - x0)) / CANVAS  # [0, 1] over the canvas
            py = (y0 + points[b, r, :, 1] * (y1 - y0)) / CANVAS
            expected = np_grid_sample(batch.masks[b, gt[b, r]].astype(np.float64), px, py)
            np.testing.assert_allclose(values[b, r], expected, rtol=1e-5, atol=1e-5)

    # One mask whose tight box is 16 × 16 pixels: a 16² box-frame grid holds its pixels exactly.
    yy, xx = np.mgrid[:CANVAS, :CANVAS]
    full = ((xx >= 20) & (xx < 36) & (yy >= 10) & (yy < 26) & ((xx + yy) % 5 != 0))[None]
    frames, coverage = box_frame_masks(full, 16)
    np.testing.assert_array_equal(frames[0], [20, 10, 36, 26])
    common = dict(images=np.zeros((1, CANVAS, CANVAS, 3), np.uint8), image_sizes=IMAGE_SIZES[:1],
                  orig_sizes=IMAGE_SIZES[:1], image_ids=np.zeros(1, np.int32), boxes=frames[None],
                  labels=np.zeros((1, 1), np.int32), valid=np.ones((1, 1), bool), is_crowd=np.zeros((1, 1), bool))
    box = jnp.asarray([[[17.5, 8.2, 39.1, 27.9]]], jnp.float32)
    pts = jnp.asarray(points[:1, :1])
    full_values = point_targets(Batch(masks=full[None], **common), box, jnp.zeros((1, 1), jnp.int32), pts)
    frame_values = point_targets(Batch(masks=coverage[None], mask_boxes=frames[None], **common), box,
                                 jnp.zeros((1, 1), jnp.int32), pts)
    np.testing.assert_allclose(frame_values, full_values, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(full_values)) > 0.5
