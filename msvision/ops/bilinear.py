"""Bilinear sampling weights: the four corners of ``grid_sample(bilinear, zeros, align_corners=False)``.

One op for every point sampler: the XLA and Pallas paths of multi-scale deformable
attention (:mod:`msvision.ops.msda`) and the point samplers of :mod:`msvision.ops.roi_align`
(:func:`~msvision.ops.roi_align.sample_bilinear`, the EffSeg neck fusion, thesis §5.3.3).

Coordinates: locations are ``(x, y)`` normalised to the map, (0, 0) its top-left corner
and (1, 1) its bottom-right corner; pixel (i, j) is centred at
``((j + 0.5) / W, (i + 0.5) / H)``. Corners outside the map weigh zero (``padding_mode='zeros'``).
A sampled value is ``Σ_corners weight · map[pixel_index]`` (row-major ``y · W + x``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Corner", "BilinearCorners", "bilinear_corner_list", "bilinear_corners"]


class BilinearCorners(NamedTuple):
    """The four bilinear corners of a set of sampling points on one level.

    Every field has the shape of the sampled points plus a trailing corner axis of 4,
    ordered (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1).

    pixel_index: int32 ``y * W + x``, clamped into the map (use with ``weight``).
    weight: float32 bilinear weight, zero for corners outside the map.
    d_weight_dx: float32 derivative of ``weight`` w.r.t. the normalised x location.
    d_weight_dy: float32 derivative of ``weight`` w.r.t. the normalised y location.
    """

    pixel_index: jax.Array
    weight: jax.Array
    d_weight_dx: jax.Array
    d_weight_dy: jax.Array


class Corner(NamedTuple):
    """One bilinear corner of a set of sampling points (all fields shaped like them).

    pixel_index: int32 ``y * W + x``, clamped into the map (use with ``inside``).
    inside: bool, the corner lies inside the map (else it samples a zero).
    weight: float32 bilinear weight, zero when not ``inside``.
    d_weight_dx, d_weight_dy: float32 derivatives of ``weight`` w.r.t. the
        normalised x and y locations.
    """

    pixel_index: jax.Array
    inside: jax.Array
    weight: jax.Array
    d_weight_dx: jax.Array
    d_weight_dy: jax.Array


def bilinear_corner_list(x_normalized: jax.Array, y_normalized: jax.Array, height: int,
                         width: int) -> list[Corner]:
    """The four corners of ``grid_sample(bilinear, zeros, align_corners=False)``.

    Args:
        x_normalized, y_normalized: float32 arrays of the same shape, locations in
            [0, 1]-normalised map coordinates (outside values allowed).
        height, width: map size (static ints, or float arrays broadcasting against the
            locations for maps of per-point size; ``pixel_index`` is then float).

    Returns:
        Corners (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1). Pure
        elementwise jnp without stacking, so the Pallas kernels use it too.
    """
    # Pixel-centre coordinates (align_corners=False). Clipping far-away points keeps
    # the int conversion defined; every corner of a clipped point is outside anyway.
    x = jnp.clip(x_normalized * width - 0.5, -2.0, width + 1.0)
    y = jnp.clip(y_normalized * height - 0.5, -2.0, height + 1.0)
    x0f = jnp.floor(x)
    y0f = jnp.floor(y)
    fx = x - x0f
    fy = y - y0f
    x0 = x0f.astype(jnp.int32)
    y0 = y0f.astype(jnp.int32)

    corners = []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        inside_f = jnp.where(inside, 1.0, 0.0)
        wx = fx if dx else 1.0 - fx
        wy = fy if dy else 1.0 - fy
        sign_x = 1.0 if dx else -1.0
        sign_y = 1.0 if dy else -1.0
        corners.append(Corner(
            pixel_index=jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1),
            inside=inside,
            weight=inside_f * wx * wy,
            # d/dx_normalized = W * d/dx_pixel since x_pixel = x_normalized * W - 0.5.
            d_weight_dx=inside_f * sign_x * wy * width,
            d_weight_dy=inside_f * sign_y * wx * height,
        ))
    return corners


def bilinear_corners(x_normalized: jax.Array, y_normalized: jax.Array, height: int,
                     width: int) -> BilinearCorners:
    """:func:`bilinear_corner_list` stacked on a trailing corner axis of 4."""
    corners = bilinear_corner_list(x_normalized, y_normalized, height, width)
    stack = lambda field: jnp.stack([getattr(c, field) for c in corners], axis=-1)  # noqa: E731
    return BilinearCorners(stack("pixel_index"), stack("weight"), stack("d_weight_dx"), stack("d_weight_dy"))
