"""RoIAlign family: torchvision oracle, numpy loops written from the definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from msvision.ops.roi_align import (multilevel_roi_align, multilevel_sample_bilinear, roi_align, roi_levels,
                                    roi_mask_centre_values, roi_mask_targets, sample_bilinear)


def random_boxes(rng, batch, rois, image_h, image_w, spill=0.3):
    """Boxes partly outside the image (up to ``spill`` of the image size on each side)."""
    x = rng.uniform(-spill * image_w, (1 + spill) * image_w, (batch, rois, 2))
    y = rng.uniform(-spill * image_h, (1 + spill) * image_h, (batch, rois, 2))
    boxes = np.stack([x.min(-1), y.min(-1), x.max(-1), y.max(-1)], -1)
    return boxes.astype(np.float32)


def torch_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    import torch
    from torchvision.ops import roi_align as tv_roi_align

    batch, rois = boxes.shape[:2]
    index = np.repeat(np.arange(batch, dtype=np.float32), rois)[:, None]
    tv_boxes = torch.from_numpy(np.concatenate([index, boxes.reshape(-1, 4)], 1))
    x = torch.from_numpy(np.ascontiguousarray(features.transpose(0, 3, 1, 2)))
    out = tv_roi_align(x, tv_boxes, output_size, spatial_scale, sampling_ratio, aligned)
    return out.numpy().transpose(0, 2, 3, 1).reshape(batch, rois, output_size, output_size, -1)


@pytest.mark.oracle
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale,sampling_ratio,output_size", [(1.0, 2, 7), (0.25, 2, 14), (0.125, 1, 5),
                                                               (0.5, 3, 4)])
def test_roi_align_matches_torchvision(aligned, scale, sampling_ratio, output_size):
    pytest.importorskip("torchvision")
    rng = np.random.default_rng(int(scale * 100) + sampling_ratio)
    height, width = 9, 13
    features = rng.standard_normal((2, height, width, 3)).astype(np.float32)
    boxes = random_boxes(rng, 2, 6, height / scale, width / scale)
    boxes[0, 0] = [3.0, 3.0, 3.0, 3.0]  # degenerate box (torchvision forces 1x1 when not aligned)
    expected = torch_roi_align(features, boxes, output_size, scale, sampling_ratio, aligned)
    actual = jax.jit(roi_align, static_argnums=(2, 3, 4, 5))(jnp.asarray(features), jnp.asarray(boxes), output_size,
                                                             scale, sampling_ratio, aligned)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.oracle
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_gradient_matches_torch_autograd(aligned):
    torch = pytest.importorskip("torch")
    from torchvision.ops import roi_align as tv_roi_align

    rng = np.random.default_rng(7)
    features = rng.standard_normal((2, 6, 8, 4)).astype(np.float32)
    boxes = random_boxes(rng, 2, 5, 12, 16)
    cotangent = rng.standard_normal((2, 5, 3, 3, 4)).astype(np.float32)

    grad = jax.jit(jax.grad(lambda f: jnp.sum(roi_align(f, jnp.asarray(boxes), 3, 0.5, 2, aligned) * cotangent)))(
        jnp.asarray(features))

    x = torch.from_numpy(np.ascontiguousarray(features.transpose(0, 3, 1, 2))).requires_grad_(True)
    index = np.repeat(np.arange(2, dtype=np.float32), 5)[:, None]
    tv_boxes = torch.from_numpy(np.concatenate([index, boxes.reshape(-1, 4)], 1))
    out = tv_roi_align(x, tv_boxes, 3, 0.5, 2, aligned)
    target = torch.from_numpy(np.ascontiguousarray(cotangent.reshape(10, 3, 3, 4).transpose(0, 3, 1, 2)))
    (out * target).sum().backward()
    np.testing.assert_allclose(grad, x.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_roi_levels_follow_eq_5_1():
    sides = np.array([1.0, 55.0, 111.9, 112.0, 223.0, 224.0, 447.0, 448.0, 2000.0], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
    expected = [2 + min(max(math.floor(math.log2(s / 56 + 1e-6)), 0), 3) for s in sides]
    np.testing.assert_array_equal(roi_levels(jnp.asarray(boxes)), expected)
    assert expected[:4] == [2, 2, 2, 3] and expected[-1] == 5
    # An empty box lands on the finest level instead of producing NaN.
    assert int(roi_levels(jnp.zeros((4,)))) == 2


def numpy_bilinear_tv(feature, y, x):
    """torchvision's bilinear_interpolate on one [H, W, C] map, written from its source."""
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high]
            + ly * hx * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])


def numpy_roi_align_one(feature, box, scale, output_size, sampling_ratio):
    x0, y0, x1, y1 = np.asarray(box, np.float64) * scale - 0.5
    bin_w, bin_h = (x1 - x0) / output_size, (y1 - y0) / output_size
    out = np.zeros((output_size, output_size, feature.shape[-1]))
    for i in range(output_size):
        for j in range(output_size):
            for sy in range(sampling_ratio):
                for sx in range(sampling_ratio):
                    y = y0 + i * bin_h + (sy + 0.5) * bin_h / sampling_ratio
                    x = x0 + j * bin_w + (sx + 0.5) * bin_w / sampling_ratio
                    out[i, j] += numpy_bilinear_tv(feature, y, x)
    return out / sampling_ratio ** 2


def test_multilevel_roi_align_matches_numpy_loop():
    rng = np.random.default_rng(3)
    image = 64
    pyramid = {k: rng.standard_normal((2, image >> k, (image + 16) >> k, 3)).astype(np.float32) for k in (2, 3, 4)}
    boxes = random_boxes(rng, 2, 7, image, image + 16)
    levels = rng.integers(2, 5, (2, 7)).astype(np.int32)
    actual = np.asarray(jax.jit(multilevel_roi_align, static_argnums=3)(
        {k: jnp.asarray(v) for k, v in pyramid.items()}, jnp.asarray(boxes), jnp.asarray(levels), 4))
    for b in range(2):
        for r in range(7):
            k = int(levels[b, r])
            expected = numpy_roi_align_one(pyramid[k][b], boxes[b, r], 2.0 ** -k, 4, 2)
            np.testing.assert_allclose(actual[b, r], expected, rtol=1e-5, atol=1e-5)


def test_multilevel_roi_align_gathers_only_the_roi_level():
    """Not a select over per-level results: the jaxpr has exactly one gather per bilinear
    corner (4), not 4 per level."""
    pyramid = {k: jnp.ones((1, 16 >> k, 16 >> k, 2)) for k in (1, 2, 3)}
    jaxpr = jax.make_jaxpr(lambda p, b, l: multilevel_roi_align(p, b, l, 2))(
        pyramid, jnp.zeros((1, 3, 4)), jnp.zeros((1, 3), jnp.int32))
    assert str(jaxpr).count("gather[") == 4


def numpy_grid_sample(feature, x, y):
    """grid_sample(bilinear, zeros, align_corners=False) at normalised (x, y)."""
    height, width = feature.shape[:2]
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = np.zeros(feature.shape[-1])
    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yi < height and 0 <= xi < width:
                out += wy * wx * feature[yi, xi]
    return out


def test_sample_bilinear_matches_numpy_and_levels():
    rng = np.random.default_rng(5)
    pyramid = {k: rng.standard_normal((2, 24 >> k, 40 >> k, 3)).astype(np.float32) for k in (1, 2, 3)}
    points = rng.uniform(-0.1, 1.1, (2, 9, 2)).astype(np.float32)
    levels = rng.integers(1, 4, (2, 9)).astype(np.int32)
    single = np.asarray(sample_bilinear(jnp.asarray(pyramid[2]), jnp.asarray(points)))
    multi = np.asarray(multilevel_sample_bilinear({k: jnp.asarray(v) for k, v in pyramid.items()},
                                                  jnp.asarray(points), jnp.asarray(levels)))
    for b in range(2):
        for n in range(9):
            x, y = points[b, n]
            np.testing.assert_allclose(single[b, n], numpy_grid_sample(pyramid[2][b], x, y), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(multi[b, n], numpy_grid_sample(pyramid[int(levels[b, n])][b], x, y),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.oracle
def test_sample_bilinear_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    features = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    points = rng.uniform(-0.2, 1.2, (2, 11, 2)).astype(np.float32)
    grid = torch.from_numpy(2 * points - 1)[:, :, None, :]  # [B, N, 1, 2]
    expected = torch.nn.functional.grid_sample(torch.from_numpy(features.transpose(0, 3, 1, 2)), grid,
                                               mode="bilinear", padding_mode="zeros", align_corners=False)
    expected = expected.numpy()[..., 0].transpose(0, 2, 1)
    np.testing.assert_allclose(sample_bilinear(jnp.asarray(features), jnp.asarray(points)), expected,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
@pytest.mark.parametrize("mask_stride", [1, 2])
def test_mask_targets_are_roi_align_with_growing_sampling(mask_stride):
    """v at 112/2^i equals torchvision roi_align with 2^(i+1) samples per cell on the
    float mask (here a 16-cell grid: 16 and 8 with 2 and 4 samples)."""
    pytest.importorskip("torchvision")
    rng = np.random.default_rng(11)
    masks = rng.random((2, 3, 20, 24)) > 0.6
    boxes = random_boxes(rng, 2, 4, 20 * mask_stride, 24 * mask_stride, spill=0.1)
    index = rng.integers(0, 3, (2, 4)).astype(np.int32)
    targets = jax.jit(roi_mask_targets, static_argnums=(3, 4, 5))
    values = targets(jnp.asarray(masks), jnp.asarray(boxes), jnp.asarray(index), mask_stride, 16, 3)
    assert [v.shape for v in values] == [(2, 4, 16, 16), (2, 4, 8, 8), (2, 4, 4, 4)]
    per_roi = masks[np.arange(2)[:, None], index].astype(np.float32)  # [B, R, H, W]
    for level, v in enumerate(values):
        size = 16 >> level
        for r in range(4):
            expected = torch_roi_align(per_roi[:, r, :, :, None], boxes[:, r:r + 1], size, 1.0 / mask_stride,
                                       2 << level, True)
            np.testing.assert_allclose(v[:, r], expected[:, 0, ..., 0], rtol=1e-5, atol=1e-6)
    assert float(jnp.min(values[0])) >= 0.0 and float(jnp.max(values[0])) <= 1.0


# --- padding-aware variants (an image's RoI features / targets do not depend on its batch) ---


def test_multilevel_roi_align_with_image_sizes_equals_the_image_alone():
    """A RoI of an image padded into a larger canvas reads what the image alone reads: the
    border rules (clamp in [size-1, size], zero beyond) apply at ceil(h / 2^k), not at the
    canvas. Without image_sizes the padded result differs near the border."""
    rng = np.random.default_rng(21)
    h, w = 37, 45  # not multiples of the strides
    canvas_h, canvas_w = 64, 64
    keys = (2, 3, 4)
    alone = {k: rng.standard_normal((1, -(-h // 2 ** k), -(-w // 2 ** k), 3)).astype(np.float32) for k in keys}
    padded = {k: np.pad(v, ((0, 0), (0, canvas_h // 2 ** k - v.shape[1]), (0, canvas_w // 2 ** k - v.shape[2]),
                            (0, 0)), constant_values=7.0) for k, v in alone.items()}  # garbage in the padding
    boxes = random_boxes(rng, 1, 12, h, w, spill=0.4)
    levels = rng.integers(2, 5, (1, 12)).astype(np.int32)
    fn = jax.jit(multilevel_roi_align, static_argnums=3)
    expected = np.asarray(fn({k: jnp.asarray(v) for k, v in alone.items()}, jnp.asarray(boxes), jnp.asarray(levels),
                             5))
    actual = np.asarray(jax.jit(lambda p, b, l, s: multilevel_roi_align(p, b, l, 5, image_sizes=s))(
        {k: jnp.asarray(v) for k, v in padded.items()}, jnp.asarray(boxes), jnp.asarray(levels),
        jnp.asarray([[h, w]], jnp.int32)))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
    plain = np.asarray(fn({k: jnp.asarray(v) for k, v in padded.items()}, jnp.asarray(boxes), jnp.asarray(levels), 5))
    assert np.abs(plain - expected).max() > 1e-2  # the test would catch a padding leak


def test_mask_targets_with_image_sizes_equal_the_image_alone():
    rng = np.random.default_rng(22)
    h, w = 21, 27
    masks = rng.random((1, 2, h, w)) > 0.5
    padded = np.zeros((1, 2, 32, 40), bool)
    padded[:, :, :h, :w] = masks
    boxes = random_boxes(rng, 1, 5, h, w, spill=0.3)
    index = rng.integers(0, 2, (1, 5)).astype(np.int32)
    expected = roi_mask_targets(jnp.asarray(masks), jnp.asarray(boxes), jnp.asarray(index), 1.0, 8, 2)
    actual = roi_mask_targets(jnp.asarray(padded), jnp.asarray(boxes), jnp.asarray(index), 1.0, 8, 2,
                              image_sizes=jnp.asarray([[h, w]]))
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mask_stride", [1, 2])
def test_mask_centre_values_match_numpy_loop(mask_stride):
    """The ground truth at every cell centre (thesis §5.3.3): the mask pixel containing it."""
    rng = np.random.default_rng(23 + mask_stride)
    masks = rng.random((2, 3, 12, 15)) > 0.5
    image_sizes = np.array([[12 * mask_stride, 15 * mask_stride], [9 * mask_stride, 11 * mask_stride]], np.int32)
    boxes = random_boxes(rng, 2, 4, 12 * mask_stride, 15 * mask_stride, spill=0.2)
    index = rng.integers(0, 3, (2, 4)).astype(np.int32)
    size = 6
    actual = np.asarray(roi_mask_centre_values(jnp.asarray(masks), jnp.asarray(boxes), jnp.asarray(index), size,
                                               mask_stride, jnp.asarray(image_sizes)))
    for b in range(2):
        lim_h, lim_w = -(-image_sizes[b, 0] // mask_stride), -(-image_sizes[b, 1] // mask_stride)
        for r in range(4):
            x0, y0, x1, y1 = boxes[b, r].astype(np.float64)
            for i in range(size):
                for j in range(size):
                    x = (x0 + (j + 0.5) * (x1 - x0) / size) / mask_stride
                    y = (y0 + (i + 0.5) * (y1 - y0) / size) / mask_stride
                    row, col = math.floor(y), math.floor(x)
                    inside = 0 <= row < lim_h and 0 <= col < lim_w
                    expected = float(masks[b, index[b, r], row, col]) if inside else 0.0
                    assert actual[b, r, i, j] == expected, (b, r, i, j)
