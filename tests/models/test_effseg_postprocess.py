"""EffSeg inference (thesis §5.3.3; released ``EffSegHead.get_mask_scores``):
upsample-and-overwrite against a numpy loop, the paste (in-graph and host) against grid_sample
written per pixel, eq. 5.3 scores, one mask per query."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from msvision.evaluation.masks import (detection_box_masks, detection_image_masks, filled_box_masks,
                                       paste_masks_numpy)
from msvision.models.heads.effseg.postprocess import assemble_mask_logits
from msvision.models.heads.roi_mask.postprocess import mask_scores, paste_masks, upsample2x
from msvision.models.heads.roi_mask.rois import unique_queries
from msvision.structures import Detections


def numpy_upsample2x(x):
    """F.interpolate(scale_factor=2, bilinear, align_corners=False) of one [S, S] map."""
    size = x.shape[0]
    out = np.zeros((2 * size, 2 * size))

    def taps(i):
        src = max((i + 0.5) / 2 - 0.5, 0.0)
        lo = min(int(math.floor(src)), size - 1)
        hi = min(lo + 1, size - 1)
        return lo, hi, src - lo

    for i in range(2 * size):
        y0, y1, fy = taps(i)
        for j in range(2 * size):
            x0, x1, fx = taps(j)
            out[i, j] = ((1 - fy) * ((1 - fx) * x[y0, x0] + fx * x[y0, x1])
                         + fy * ((1 - fx) * x[y1, x0] + fx * x[y1, x1]))
    return out


@pytest.mark.oracle
def test_upsample2x_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 5)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear",
                                               align_corners=False).numpy()
    np.testing.assert_allclose(upsample2x(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)


def test_assemble_upsamples_and_overwrites_active_cells():
    rng = np.random.default_rng(1)
    b, r, base = 2, 3, 3
    stages = [dict(seg=rng.normal(size=(b, r * base * base)).astype(np.float32),
                   valid=np.repeat(np.array([[1, 1, 0], [1, 1, 1]], bool), base * base, axis=1),
                   roi=np.tile(np.repeat(np.arange(r), base * base), (b, 1)).astype(np.int32),
                   xy=np.tile(np.stack(np.meshgrid(np.arange(base), np.arange(base)), -1).reshape(-1, 2),
                              (b, r, 1)).reshape(b, -1, 2).astype(np.int32))]
    for s in (1, 2):
        size = base * 2 ** s
        n = 7
        cells = np.stack([rng.choice(r * size * size, n, replace=False) for _ in range(b)])
        stages.append(dict(seg=rng.normal(size=(b, n)).astype(np.float32),
                           valid=rng.random((b, n)) < 0.8,
                           roi=(cells // (size * size)).astype(np.int32),
                           xy=np.stack([cells % size, (cells // size) % size], -1).astype(np.int32)))
    actual = np.asarray(assemble_mask_logits([{k: jnp.asarray(v) for k, v in st.items()} for st in stages], r, base))
    for image in range(b):
        logits = np.zeros((r, base, base))
        for s, st in enumerate(stages):
            if s:
                logits = np.stack([numpy_upsample2x(m) for m in logits])
            for a in range(st["seg"].shape[1]):
                if st["valid"][image, a]:
                    x, y = st["xy"][image, a]
                    logits[st["roi"][image, a], y, x] = st["seg"][image, a]
        np.testing.assert_allclose(actual[image], logits, rtol=1e-5, atol=1e-5)


def numpy_paste(prob, box, height, width):
    """mmdet _do_paste_mask per pixel: grid_sample(bilinear, zeros, align_corners=False)."""
    size = prob.shape[0]
    x0, y0, x1, y1 = np.asarray(box, np.float64)
    out = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            u = (j + 0.5 - x0) / (x1 - x0) * size - 0.5
            v = (i + 0.5 - y0) / (y1 - y0) * size - 0.5
            cu, cv = math.floor(u), math.floor(v)
            for yy, wy in ((cv, 1 - (v - cv)), (cv + 1, v - cv)):
                for xx, wx in ((cu, 1 - (u - cu)), (cu + 1, u - cu)):
                    if 0 <= yy < size and 0 <= xx < size:
                        out[i, j] += wy * wx * prob[yy, xx]
    return out


PROBS = np.random.default_rng(2).random((3, 6, 6)).astype(np.float32)
PASTE_BOXES = np.array([[2.3, 1.7, 13.1, 9.4], [-4.0, 5.5, 6.2, 20.0], [10.0, 10.0, 30.0, 11.0]], np.float32)


def test_paste_matches_grid_sample_per_pixel():
    height, width = 16, 19
    expected = np.stack([numpy_paste(p, b, height, width) for p, b in zip(PROBS, PASTE_BOXES)])
    np.testing.assert_allclose(paste_masks(jnp.asarray(PROBS), jnp.asarray(PASTE_BOXES), height, width), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(paste_masks_numpy(PROBS, PASTE_BOXES, height, width, 0.5), expected > 0.5)


@pytest.mark.oracle
def test_paste_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    height, width = 16, 19
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    grids = []
    for x0, y0, x1, y1 in PASTE_BOXES.astype(np.float64):
        gx = (xs - x0) / (x1 - x0) * 2 - 1
        gy = (ys - y0) / (y1 - y0) * 2 - 1
        grids.append(np.stack(np.broadcast_arrays(gx[None, :], gy[:, None]), -1))
    expected = torch.nn.functional.grid_sample(torch.from_numpy(PROBS[:, None]),
                                               torch.from_numpy(np.stack(grids).astype(np.float32)),
                                               align_corners=False).numpy()[:, 0]
    np.testing.assert_allclose(paste_masks(jnp.asarray(PROBS), jnp.asarray(PASTE_BOXES), height, width), expected,
                               rtol=1e-5, atol=1e-5)


def test_mask_scores_are_the_mean_foreground_probability_inside_the_image():
    canvas = (16, 19)
    image_size = np.array([14, 15], np.int32)
    actual = mask_scores(jnp.asarray(PROBS), jnp.asarray(PASTE_BOXES), jnp.asarray(image_size), canvas, 0.5, chunk=2)
    for k in range(3):
        pasted = numpy_paste(PROBS[k], PASTE_BOXES[k], *canvas)[:image_size[0], :image_size[1]]
        fg = pasted > 0.5
        expected = pasted[fg].sum() / (fg.sum() + 1e-6)
        np.testing.assert_allclose(actual[k], expected, rtol=1e-5, atol=1e-6)
    assert float(actual[2]) == 0.0 or float(actual[2]) > 0.5  # a mean over p > 0.5, or nothing


def test_unique_queries_give_one_roi_per_detected_query():
    query_ids = jnp.asarray([7, 3, 7, 9, 3, 0], jnp.int32)
    valid = jnp.asarray([True, True, True, True, True, False])
    rois, roi_valid, inverse = unique_queries(query_ids, valid, 10, 6)
    np.testing.assert_array_equal(rois, [3, 7, 9, 10, 10, 10])
    np.testing.assert_array_equal(roi_valid, [True, True, True, False, False, False])
    np.testing.assert_array_equal(np.asarray(rois)[np.asarray(inverse)][:5], [7, 3, 7, 9, 3])


def test_detection_image_masks_paste_at_the_original_size():
    dets = Detections(boxes=np.zeros((1, 3, 4), np.float32), scores=np.ones((1, 3), np.float32),
                      labels=np.zeros((1, 3), np.int32), valid=np.array([[True, False, True]]),
                      masks=PROBS[None], mask_boxes=PASTE_BOXES[None])
    (masks,) = detection_image_masks(dets, np.array([[16, 19]]))
    assert masks.shape == (3, 16, 19) and not masks[1].any()
    np.testing.assert_array_equal(masks[[0, 2]], paste_masks_numpy(PROBS[[0, 2]], PASTE_BOXES[[0, 2]], 16, 19))


def test_box_masks_fill_the_pixels_whose_centre_is_inside():
    """The box-as-mask baseline of the evaluation: pixel (i, j) is on iff (j + ½, i + ½) is in the box."""
    boxes = np.array([[1.2, 0.0, 7.5, 4.49], [-3, 2.5, 30, 30], [5, 5, 5, 9]], np.float32)
    dets = Detections(boxes=boxes[None], scores=np.ones((1, 3), np.float32), labels=np.zeros((1, 3), np.int32),
                      valid=np.array([[True, True, False]]))
    (masks,) = detection_box_masks(dets, np.array([[9, 11]]))
    assert masks.shape == (3, 9, 11) and not masks[2].any()
    for k in range(2):
        x0, y0, x1, y1 = boxes[k].astype(np.float64)
        for i in range(9):
            for j in range(11):
                assert masks[k, i, j] == (x0 <= j + 0.5 < x1 and y0 <= i + 0.5 < y1), (k, i, j)
    np.testing.assert_array_equal(filled_box_masks(boxes[:2], 9, 11), masks[:2])
