"""Anchor boxes on the feature pyramid (author's ``AnchorGenerator``, notes §2).

Anchors are computed in numpy at trace time from the static feature-map shapes,
so under ``jax.jit`` they are compile-time constants.

Conventions: boxes ``(x0, y0, x1, y1)`` in pixels of the padded network input.
Flattening order: level (ascending), then feature location row-major (y, then x),
then cell anchor (size-major, aspect-ratio-minor).

Centre offset: the author's code (and the thesis) put the anchor of feature cell
``(y, x)`` at ``(stride * (x + 0.5), stride * (y + 0.5))``; torchvision's
``AnchorGenerator`` and detectron2's ``DefaultAnchorGenerator`` (offset 0.0) put it
at ``(stride * x, stride * y)``. ``grid_anchors(..., offset=0.0)`` reproduces the
latter.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def anchor_cell_shapes(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Widths and heights of the anchors of one feature cell.

    An anchor of size ``s`` and aspect ratio ``r = h / w`` has area ``s**2``:
    ``w = sqrt(s**2 / r)``, ``h = r * w``.

    Args:
      sizes: anchor sizes (square-root of the area) in pixels.
      aspect_ratios: ratios ``h / w``.

    Returns:
      ``[A, 2]`` float32 ``(w, h)``, ``A = len(sizes) * len(aspect_ratios)``, ordered
      size-major, ratio-minor.
    """
    shapes = []
    for size in sizes:
        for ratio in aspect_ratios:
            w = math.sqrt(size * size / ratio)
            shapes.append((w, ratio * w))
    return np.asarray(shapes, dtype=np.float32).reshape(-1, 2)


def retinanet_anchor_sizes(level: int, base_scale: float = 4, scales_per_octave: int = 3) -> tuple:
    """RetinaNet sizes on level ``l``: ``base_scale * 2**l * 2**(j / n)``, ``j < n``.

    ``retinanet_anchor_sizes(3) == (32, 40.32, 50.80)`` (author notes §2).
    """
    return tuple(
        float(base_scale * 2.0**level * 2.0 ** (j / scales_per_octave))
        for j in range(scales_per_octave)
    )


def grid_anchors(
    feature_hw: tuple[int, int], stride: int, cell_shapes: np.ndarray, *, offset: float = 0.5
) -> np.ndarray:
    """Anchors of every cell of one feature map.

    Args:
      feature_hw: ``(h, w)`` of the feature map.
      stride: pixels per feature cell.
      cell_shapes: ``[A, 2]`` ``(w, h)`` from :func:`anchor_cell_shapes`.
      offset: anchor centre of cell ``(y, x)`` is ``stride * (x + offset)``,
        ``stride * (y + offset)``; 0.5 as the author's code, 0.0 as torchvision.

    Returns:
      ``[h * w * A, 4]`` float32 ``(x0, y0, x1, y1)``, row-major location then
      cell anchor.
    """
    h, w = int(feature_hw[0]), int(feature_hw[1])
    cell_shapes = np.asarray(cell_shapes, np.float32).reshape(-1, 2)
    ys = (np.arange(h, dtype=np.float32) + offset) * stride
    xs = (np.arange(w, dtype=np.float32) + offset) * stride
    cy, cx = np.meshgrid(ys, xs, indexing="ij")  # [h, w]
    centres = np.stack([cx, cy], axis=-1).reshape(-1, 1, 2)  # [h*w, 1, 2]
    half = 0.5 * cell_shapes[None]  # [1, A, 2]
    boxes = np.concatenate([centres - half, centres + half], axis=-1)
    return boxes.reshape(-1, 4).astype(np.float32)


def pyramid_anchors(
    feature_hws: Mapping[int, tuple[int, int]],
    sizes: Mapping[int, Sequence[float]],
    aspect_ratios: Sequence[float],
    *,
    offset: float = 0.5,
) -> np.ndarray:
    """Anchors on all pyramid levels, concatenated level by level (ascending).

    Args:
      feature_hws: ``{level: (h, w)}``; level ``l`` has stride ``2**l``.
      sizes: ``{level: sizes}``, e.g. ``{l: retinanet_anchor_sizes(l)}``.
      aspect_ratios: ratios ``h / w`` shared by all levels.
      offset: see :func:`grid_anchors`.

    Returns:
      ``[sum_l h_l * w_l * A, 4]`` float32 ``(x0, y0, x1, y1)``.
    """
    out = [
        grid_anchors(
            feature_hws[level],
            2**level,
            anchor_cell_shapes(sizes[level], aspect_ratios),
            offset=offset,
        )
        for level in sorted(feature_hws)
    ]
    return np.concatenate(out, axis=0)
