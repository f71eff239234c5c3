"""Bilinear corner weights (``grid_sample(bilinear, zeros, align_corners=False)``): a numpy
per-point oracle, the derivatives against finite differences, and the two samplers built on
them (MSDA's XLA path, RoIAlign's point sampler) against each other."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from msvision.ops.bilinear import bilinear_corner_list, bilinear_corners
from msvision.ops.msda.xla import multiscale_deformable_attention_xla
from msvision.ops.roi_align import sample_bilinear


def numpy_grid_sample(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """One point of ``grid_sample(bilinear, zeros, align_corners=False)`` on ``image [H, W, C]``."""
    height, width, _ = image.shape
    u, v = x * width - 0.5, y * height - 0.5
    x0, y0 = int(np.floor(u)), int(np.floor(v))
    out = np.zeros(image.shape[-1])
    for yi, wy in ((y0, 1 - (v - y0)), (y0 + 1, v - y0)):
        for xi, wx in ((x0, 1 - (u - x0)), (x0 + 1, u - x0)):
            if 0 <= yi < height and 0 <= xi < width:
                out += wy * wx * image[yi, xi]
    return out


def test_bilinear_corner_weights_sum_to_one_inside_and_vanish_outside():
    # Width 5, height 4: pixel centres span x in [0.1, 0.9], y in [0.125, 0.875].
    x = jnp.asarray([0.5, 0.15, 0.85, -0.3, 1.3, 0.0])
    y = jnp.asarray([0.5, 0.5, 0.25, 0.5, 0.5, 0.0])
    corners = bilinear_corners(x, y, 4, 5)
    total = np.asarray(corners.weight.sum(-1))
    np.testing.assert_allclose(total[:3], 1.0, rtol=1e-6)
    np.testing.assert_allclose(total[3:5], 0.0)
    # (0, 0) is the outer corner of pixel (0, 0): a quarter of its bilinear footprint.
    np.testing.assert_allclose(total[5], 0.25, rtol=1e-6)


def test_corners_sample_as_grid_sample():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((4, 5, 3))
    x, y = rng.uniform(-0.2, 1.2, 50), rng.uniform(-0.2, 1.2, 50)
    table = image.reshape(-1, 3)
    got = sum(np.asarray(c.weight)[:, None] * table[np.asarray(c.pixel_index)]
              for c in bilinear_corner_list(jnp.asarray(x), jnp.asarray(y), 4, 5))
    expected = np.stack([numpy_grid_sample(image, a, b) for a, b in zip(x, y)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_weight_derivatives_match_finite_differences():
    # Away from pixel centres, where the weights have kinks.
    x = jnp.asarray([0.33, 0.71, 0.05])
    y = jnp.asarray([0.41, 0.9, 0.5])
    eps = 1e-3
    corners = bilinear_corners(x, y, 4, 5)
    dx = (bilinear_corners(x + eps, y, 4, 5).weight - bilinear_corners(x - eps, y, 4, 5).weight) / (2 * eps)
    dy = (bilinear_corners(x, y + eps, 4, 5).weight - bilinear_corners(x, y - eps, 4, 5).weight) / (2 * eps)
    np.testing.assert_allclose(corners.d_weight_dx, dx, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(corners.d_weight_dy, dy, rtol=1e-3, atol=1e-3)


def test_msda_and_roi_point_sampling_agree():
    """One level, one head, one point of weight 1: MSDA's XLA path is ``sample_bilinear``."""
    rng = np.random.default_rng(1)
    h, w, c, q = 6, 7, 4, 20
    feature = rng.standard_normal((1, h, w, c)).astype(np.float32)
    points = rng.uniform(-0.1, 1.1, (1, q, 2)).astype(np.float32)
    msda = multiscale_deformable_attention_xla(feature.reshape(1, h * w, 1, c), ((h, w),),
                                               points.reshape(1, q, 1, 1, 1, 2), np.ones((1, q, 1, 1, 1), np.float32))
    np.testing.assert_allclose(msda.reshape(1, q, c), sample_bilinear(jnp.asarray(feature), jnp.asarray(points)),
                               rtol=1e-6, atol=1e-6)
