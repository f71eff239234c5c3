"""Anchor boxes on the feature pyramid (the author's ``AnchorGenerator``,
DetSeg ``models/modules/anchor.py``).

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

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msvision.ops.padding import valid_sizes


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
    """The anchors of a head (config section ``model.head.anchors``).

    Attributes:
      base_scale: sizes on level ``l`` are ``base_scale · 2^l · 2^(j/num_sizes)``,
        ``j < num_sizes`` (RetinaNet's, thesis 3.4.1 and 4.4.1).
      num_sizes: sizes per level (3).
      aspect_ratios: ratios ``h / w`` (RetinaNet's (0.5, 1, 2); FQDetV2 adds 1/8,
        1/4, 4, 8).
      offset: anchor centre of cell ``(y, x)`` at ``stride · (x + offset)``: 0.5
        in the author's FQDet code, 0.0 in detectron2's RetinaNet.
    """

    base_scale: float = 4.0
    num_sizes: int = 3
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    offset: float = 0.5

    @property
    def num_types(self) -> int:
        """Anchors per feature cell."""
        return self.num_sizes * len(self.aspect_ratios)

    def sizes(self, level: int) -> tuple[float, ...]:
        return retinanet_anchor_sizes(level, self.base_scale, self.num_sizes)

    def pyramid(self, feature_hws: Mapping[int, tuple[int, int]]) -> np.ndarray:
        """``[N, 4]`` anchors of every level of ``feature_hws`` (see :func:`pyramid_anchors`)."""
        sizes = {l: self.sizes(l) for l in feature_hws}
        return pyramid_anchors(feature_hws, sizes, tuple(self.aspect_ratios), offset=self.offset)


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


def retinanet_anchor_sizes(level: int, base_scale: float = 4, num_sizes: int = 3) -> tuple:
    """RetinaNet sizes on level ``l``: ``base_scale * 2**l * 2**(j / n)``, ``j < n``.

    ``retinanet_anchor_sizes(3) == (32, 40.32, 50.80)`` (DetSeg ``AnchorGenerator``).
    """
    return tuple(
        float(base_scale * 2.0**level * 2.0 ** (j / num_sizes))
        for j in range(num_sizes)
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


def anchor_cells(feature_hws: dict[int, tuple[int, int]], num_types: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cells [N, 2] int32 (y, x), strides [N] int32)`` of every anchor, in the
    flattening order of :mod:`msvision.ops.anchors`."""
    cells, strides = [], []
    for level in sorted(feature_hws):
        h, w = feature_hws[level]
        yx = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 1, 2)
        cells.append(np.broadcast_to(yx, (h * w, num_types, 2)).reshape(-1, 2))
        strides.append(np.full((h * w * num_types,), 2**level))
    return np.concatenate(cells).astype(np.int32), np.concatenate(strides).astype(np.int32)


def anchors_in_valid_map(cells: np.ndarray, strides: np.ndarray, image_sizes: jax.Array) -> jax.Array:
    """``[B, N]`` bool: the anchor's feature cell lies inside the image's valid map.

    Args:
      cells: ``[N, 2]`` (y, x) cell of each anchor; strides: ``[N]`` its level's stride.
      image_sizes: ``[B, 2]`` int ``(h, w)`` of the images inside the padding.
    """
    sizes = jnp.asarray(image_sizes, jnp.int32)[:, None, :]  # [B, 1, 2]
    limits = valid_sizes(sizes, jnp.asarray(strides)[None, :, None])  # [B, N, 2]
    return jnp.all(jnp.asarray(cells)[None] < limits, axis=-1)
