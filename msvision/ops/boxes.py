"""Box utilities: areas, pairwise and elementwise IoU, format changes, deltas.

Conventions (all functions): boxes are ``(x0, y0, x1, y1)`` float in pixels, x to
the right, y down; centre format is ``(cx, cy, w, h)``. Pure ``jax.numpy``
functions with static shapes; batch dimensions via ``jax.vmap`` unless a
function is documented as elementwise over leading dimensions ``[...]``.

Degenerate boxes (zero width or height) are allowed: areas are not clamped (as in
``torchvision.ops.box_area``), and every ratio whose denominator is zero returns 0
instead of NaN.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

Array = jnp.ndarray

# detectron2 / torchvision default: no box may grow more than 1000/16 times its
# anchor in one step (the author's RcnnBoxCoder clamps exp() at 62.5 = 1000/16).
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _safe_div(num: Array, den: Array) -> Array:
    """``num / den`` with 0 where ``den == 0`` (gradient-safe)."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)


def box_area(boxes: Array) -> Array:
    """Areas of ``boxes [..., 4]`` -> ``[...]`` (``(x1 - x0) * (y1 - y0)``, unclamped)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _pairwise_inter_union(boxes1: Array, boxes2: Array) -> tuple[Array, Array]:
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = jnp.clip(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter, union


def box_iou(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise IoU.

    Args:
      boxes1: ``[N, 4]`` float, ``(x0, y0, x1, y1)``.
      boxes2: ``[M, 4]`` float, ``(x0, y0, x1, y1)``.

    Returns:
      ``[N, M]`` IoU; 0 where the union is 0.
    """
    inter, union = _pairwise_inter_union(boxes1, boxes2)
    return _safe_div(inter, union)


def box_ioa(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise intersection over the area of the first box.

    Used to find anchors lying inside COCO crowd regions.

    Args:
      boxes1: ``[N, 4]`` (e.g. anchors), ``boxes2``: ``[M, 4]`` (e.g. crowd boxes).

    Returns:
      ``[N, M]`` ``|b1 ∩ b2| / |b1|``; 0 where ``|b1| == 0``.
    """
    inter, _ = _pairwise_inter_union(boxes1, boxes2)
    return _safe_div(inter, box_area(boxes1)[:, None])


def generalized_box_iou(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise generalized IoU (Rezatofighi et al. 2019), ``[N, 4] x [M, 4] -> [N, M]``.

    ``GIoU = IoU - (|C| - |A ∪ B|) / |C|`` with ``C`` the smallest enclosing box; the
    second term is 0 where ``|C| == 0``. Values in ``[-1, 1]``.
    """
    inter, union = _pairwise_inter_union(boxes1, boxes2)
    iou = _safe_div(inter, union)
    lt = jnp.minimum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = jnp.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = jnp.clip(rb - lt, 0.0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - _safe_div(enclosing - union, enclosing)


def elementwise_box_iou(boxes1: Array, boxes2: Array) -> Array:
    """IoU of corresponding boxes, ``[..., 4] x [..., 4] -> [...]`` (broadcasting)."""
    lt = jnp.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = jnp.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = jnp.clip(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return _safe_div(inter, union)


def box_xyxy_to_cxcywh(boxes: Array) -> Array:
    """``[..., 4]`` ``(x0, y0, x1, y1)`` -> ``(cx, cy, w, h)``."""
    x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x0 + x1) * 0.5, (y0 + y1) * 0.5, x1 - x0, y1 - y0], axis=-1)


def box_cxcywh_to_xyxy(boxes: Array) -> Array:
    """``[..., 4]`` ``(cx, cy, w, h)`` -> ``(x0, y0, x1, y1)``."""
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def encode_box_deltas(
    boxes: Array, anchors: Array, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
) -> Array:
    """Faster R-CNN box deltas of ``boxes`` w.r.t. ``anchors`` (torchvision ``BoxCoder``).

    ``dx = wx (cx - acx) / aw``, ``dy = wy (cy - acy) / ah``,
    ``dw = ww log(w / aw)``, ``dh = wh log(h / ah)``.

    Args:
      boxes: ``[..., 4]`` target boxes ``(x0, y0, x1, y1)``, positive width/height.
      anchors: ``[..., 4]`` reference boxes, same convention, broadcastable.
      weights: ``(wx, wy, ww, wh)``; the author's code uses ``(1, 1, 1, 1)``.

    Returns:
      ``[..., 4]`` deltas ``(dx, dy, dw, dh)``.
    """
    wx, wy, ww, wh = weights
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    acx = anchors[..., 0] + 0.5 * aw
    acy = anchors[..., 1] + 0.5 * ah
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    cx = boxes[..., 0] + 0.5 * w
    cy = boxes[..., 1] + 0.5 * h
    return jnp.stack(
        [
            wx * (cx - acx) / aw,
            wy * (cy - acy) / ah,
            ww * jnp.log(w / aw),
            wh * jnp.log(h / ah),
        ],
        axis=-1,
    )


def decode_box_deltas(
    deltas: Array,
    anchors: Array,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = DEFAULT_SCALE_CLAMP,
) -> Array:
    """Inverse of :func:`encode_box_deltas` (torchvision/detectron2 ``decode``).

    ``dw`` and ``dh`` (after dividing by their weights) are clamped from above at
    ``clamp`` before ``exp`` so that a box grows at most ``exp(clamp)`` times.

    Args:
      deltas: ``[..., 4]`` ``(dx, dy, dw, dh)``.
      anchors: ``[..., 4]`` reference boxes ``(x0, y0, x1, y1)``, broadcastable.

    Returns:
      ``[..., 4]`` boxes ``(x0, y0, x1, y1)``.
    """
    wx, wy, ww, wh = weights
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    acx = anchors[..., 0] + 0.5 * aw
    acy = anchors[..., 1] + 0.5 * ah
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = jnp.minimum(deltas[..., 2] / ww, clamp)
    dh = jnp.minimum(deltas[..., 3] / wh, clamp)
    cx = dx * aw + acx
    cy = dy * ah + acy
    half_w = 0.5 * jnp.exp(dw) * aw
    half_h = 0.5 * jnp.exp(dh) * ah
    return jnp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def clip_boxes(boxes: Array, size_hw: Array) -> Array:
    """Clip ``boxes [..., 4]`` to ``[0, w] x [0, h]``.

    Args:
      boxes: ``[..., 4]`` ``(x0, y0, x1, y1)``.
      size_hw: ``[..., 2]`` ``(h, w)`` whose leading dimensions broadcast against
        ``boxes[..., 0]`` (e.g. boxes ``[B, K, 4]`` with ``size_hw[:, None, :]``).
    """
    size_hw = jnp.asarray(size_hw, boxes.dtype)
    h, w = size_hw[..., 0], size_hw[..., 1]
    zero = jnp.zeros((), boxes.dtype)
    return jnp.stack(
        [
            jnp.clip(boxes[..., 0], zero, w),
            jnp.clip(boxes[..., 1], zero, h),
            jnp.clip(boxes[..., 2], zero, w),
            jnp.clip(boxes[..., 3], zero, h),
        ],
        axis=-1,
    )


def scale_boxes(boxes: Array, scale_xy: Array) -> Array:
    """Multiply x coordinates by ``sx`` and y by ``sy``.

    Args:
      boxes: ``[..., 4]``.
      scale_xy: ``[..., 2]`` ``(sx, sy)`` broadcasting like ``size_hw`` in
        :func:`clip_boxes`, or a scalar.
    """
    scale_xy = jnp.asarray(scale_xy, boxes.dtype)
    if scale_xy.ndim == 0:
        return boxes * scale_xy
    sx, sy = scale_xy[..., 0], scale_xy[..., 1]
    return boxes * jnp.stack([sx, sy, sx, sy], axis=-1)
