"""Boundary bands and align-corners upsampling of RefineMask (Zhang et al. 2021; released code:
``generate_block_target``, DetSeg ``models/modules/refine_mask.py``).

:func:`boundary_band` is RefineMask's ``generate_block_target(mask, w) == 1``, the cells
"near the mask boundary". Its definition (a count threshold, not a distance): with the
``(2w+1) × (2w+1)`` window around a cell (cells outside the grid count as background),
a foreground cell is in the band if more than ``0.1·(2w+1)²`` window cells are
background, a background cell if more than ``0.1·(2w+1)²`` window cells are foreground.

- ``w = 1`` (inference, 9 cells, threshold 0.9): the cells with at least one
  8-neighbour of the other value, i.e. Chebyshev distance ≤ 1 to a cell of the other
  value: the two-cell-wide band around the boundary.
- ``w = 2`` (training, 25 cells, threshold 2.5): at least 3 cells of the other value in
  the 5×5 window. This is narrower than "distance ≤ 2" (a cell two away from a straight
  boundary sees 5 cells of the other value and is in; one two away from a single isolated
  cell of the other value is not).

Masks move between stages by ``F.interpolate(..., mode='bilinear', align_corners=True)``
(:func:`upsample2x_corners`); a band moves as its upsampled indicator ``≥ 0.5``
(:func:`upsample_band`). The ``S → 2S`` align-corners weights are multiples of
``1/(2S−1)``, so an upsampled indicator never equals 0.5 exactly and the released
inference's ``up(1 − band) ≥ 0.5`` (kept cells) is the complement of ``up(band) ≥ 0.5``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _window_sum(x: Array, width: int) -> Array:
    """``[..., S, S]`` int → sum over the ``(2w+1)²`` window of every cell, zeros outside."""
    size_y, size_x = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(width, width), (width, width)]
    p = jnp.pad(x, pad)
    rows = sum(p[..., dy:dy + size_y, :] for dy in range(2 * width + 1))  # box filter is separable
    return sum(rows[..., dx:dx + size_x] for dx in range(2 * width + 1))


def boundary_band(mask: Array, width: int) -> Array:
    """``mask [..., S, S] bool`` → ``[..., S, S] bool``: RefineMask's width-``width`` boundary band
    (the module docstring's definition)."""
    mask = mask.astype(bool)
    cells = (2 * width + 1) ** 2
    foreground = _window_sum(mask.astype(jnp.int32), width)
    # count / cells > 0.1, in integers (the released code: float division then > 0.1).
    fg_edge = mask & (10 * (cells - foreground) > cells)
    bg_edge = ~mask & (10 * foreground > cells)
    return fg_edge | bg_edge


def corner_weights(size: int) -> Array:
    """``[2·size, size]`` float32 interpolation matrix of ``align_corners=True`` ×2 upsampling:
    output ``i`` reads input position ``i·(size−1)/(2·size−1)``."""
    out = 2 * size
    src = jnp.arange(out, dtype=jnp.float32) * (size - 1) / max(out - 1, 1)
    low = jnp.clip(jnp.floor(src), 0, size - 1)
    frac = src - low
    cells = jnp.arange(size, dtype=jnp.float32)
    return (jnp.where(cells == low[:, None], 1.0 - frac[:, None], 0.0)
            + jnp.where(cells == low[:, None] + 1.0, frac[:, None], 0.0))


def upsample2x_corners(x: Array) -> Array:
    """``[..., S, S]`` → ``[..., 2S, 2S]`` float32:
    ``F.interpolate(scale_factor=2, mode='bilinear', align_corners=True)``."""
    w = corner_weights(x.shape[-1])
    hi = jax.lax.Precision.HIGHEST
    return jnp.einsum("ys,...st,xt->...yx", w, x.astype(jnp.float32), w, precision=hi)


def upsample_band(band: Array) -> Array:
    """``[..., S, S] bool`` → ``[..., 2S, 2S] bool``: the align-corners upsampled indicator ``≥ 0.5``."""
    return upsample2x_corners(band.astype(jnp.float32)) >= 0.5


def refine_with_band(previous: Array, current: Array, width: int = 1) -> Array:
    """One RefineMask inference step: ``previous [..., S, S]`` logits upsampled ×2 (align
    corners), overwritten by ``current [..., 2S, 2S]`` on the upsampled width-``width`` band
    of the previous prediction ``previous ≥ 0`` (sigmoid ≥ 0.5)."""
    region = upsample_band(boundary_band(previous >= 0, width))
    return jnp.where(region, current.astype(jnp.float32), upsample2x_corners(previous))


__all__ = ["boundary_band", "corner_weights", "upsample2x_corners", "upsample_band", "refine_with_band"]
