"""Mask targets of the ++ baselines (released code: mmdet ``mask_target``, called by DetSeg
``models/heads/seg/mmdet_roi.py``).

Training RoIs are EffSeg's (:func:`msvision.models.heads.roi_mask.rois.select_train_rois`):
the positive queries with their predicted boxes (no gradient) and matched objects.

- :func:`crop_resize_targets`: Mask R-CNN's target (mmdet ``mask_target_single``, a
  crop-and-resize of the object's binary mask to the RoI's S × S grid by an aligned
  RoIAlign, foreground where the average is >= 0.5). mmcv samples adaptively (⌈roi size / S⌉ samples per
  cell and axis, a data-dependent count); here every cell averages a fixed 8 × 8
  samples (EffSeg's 112² RoIAlign with 2 × 2 samples, average-pooled to 28²), i.e. the
  exact count for RoIs up to 224 px.
- :func:`point_targets`: PointRend's point targets (mmdet ``MaskPointHead.get_targets``):
  the object's mask read bilinearly (``point_sample``, ``align_corners=False``, zeros
  outside) at each point, a soft value in [0, 1].

Masks come as ``Batch.masks``: full-image ``[B, M, H, W] bool`` on the padded input
grid, or box-frame coverage grids ``[B, M, S, S] uint8`` with ``Batch.mask_boxes``
(:mod:`msvision.data.box_masks`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msvision.models.heads.roi_mask.targets import COVERAGE_SCALE, into_box_frames
from msvision.ops.roi_align import roi_mask_targets
from msvision.structures import Batch

Array = jax.Array


def crop_resize_targets(batch: Batch, boxes: Array, gt_index: Array, size: int = 28) -> Array:
    """``[B, R, size, size] bool``: ``v >= 0.5`` (mmdet's binarisation) with v the RoIAlign
    average of the object's mask over each cell.

    Args:
      boxes: ``[B, R, 4]`` float RoI boxes ``(x0, y0, x1, y1)`` in padded-input pixels.
      gt_index: ``[B, R]`` int32 object slot of each RoI.
    """
    masks = jnp.asarray(batch.masks)
    boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
    image_sizes, scale = jnp.asarray(batch.image_sizes, jnp.int32), 1.0
    if batch.mask_boxes is not None:  # box-frame coverage grids (EffSeg's targets do the same)
        masks, boxes = into_box_frames(masks, jnp.asarray(batch.mask_boxes), boxes, gt_index)
        image_sizes, scale = None, 1.0 / COVERAGE_SCALE
    # The cell average is pooled from a (4·size)² grid of 2 × 2 samples: 8 × 8 samples per cell.
    v = roi_mask_targets(masks, boxes, gt_index, 1.0, 4 * size, 3, image_sizes=image_sizes)[-1] * scale
    return v >= 0.5


def point_targets(batch: Batch, boxes: Array, gt_index: Array, points: Array) -> Array:
    """``[B, R, P] float32`` the mask of each RoI's object read at its points.

    Args:
      boxes: ``[B, R, 4]`` float RoI boxes (padded-input pixels).
      gt_index: ``[B, R]`` int32.
      points: ``[B, R, P, 2]`` float (x, y) in each RoI's ``[0, 1]²`` frame.
    """
    masks = jnp.asarray(batch.masks)
    boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
    xy = boxes[..., None, :2] + points * (boxes[..., None, 2:] - boxes[..., None, :2])  # [B, R, P, 2] pixels
    scale = 1.0
    batch_size, _, height, width = masks.shape
    limit = jnp.broadcast_to(jnp.asarray([width, height], jnp.int32), (batch_size, 2))
    if batch.mask_boxes is not None:
        # Into the cells of the object's box-frame grid, which gets a one-cell zero border.
        frame = jnp.take_along_axis(jnp.asarray(batch.mask_boxes, jnp.float32), gt_index[..., None], axis=1)
        cells_per_pixel = height / jnp.maximum(frame[..., 2:] - frame[..., :2], 1e-6)  # [B, R, 2]
        xy = (xy - frame[..., None, :2]) * cells_per_pixel[..., None, :] + 1.0
        masks = jnp.pad(masks, ((0, 0), (0, 0), (1, 1), (1, 1)))
        height, width = height + 2, width + 2
        limit = jnp.broadcast_to(jnp.asarray([width, height], jnp.int32), (batch_size, 2))
        scale = 1.0 / COVERAGE_SCALE
    else:
        # Only the image's own pixels (the padding holds no mask).
        limit = jnp.minimum(limit, jnp.asarray(batch.image_sizes, jnp.int32)[:, ::-1])
    return _bilinear_mask_values(masks, gt_index, xy, limit) * scale


def _bilinear_mask_values(masks: Array, gt_index: Array, xy: Array, limit: Array) -> Array:
    """``grid_sample(align_corners=False, zeros)`` of ``masks[b, gt_index[b, r]]`` at pixel
    positions ``xy [B, R, P, 2]`` (pixel (i, j) centred at (j + ½, i + ½)); cells at or beyond
    ``limit [B, 2]`` (w, h) read as zero. The masks are gathered in their own dtype."""
    batch_size, num_masks, height, width = masks.shape
    table = masks.reshape(-1)
    u = xy[..., 0] - 0.5
    v = xy[..., 1] - 0.5
    x0, y0 = jnp.floor(u), jnp.floor(v)
    fx, fy = u - x0, v - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    base = (jnp.arange(batch_size, dtype=jnp.int32)[:, None] * num_masks + gt_index.astype(jnp.int32))  # [B, R]
    base = base[..., None] * (height * width)
    lim_w = limit[:, 0].reshape(batch_size, 1, 1)
    lim_h = limit[:, 1].reshape(batch_size, 1, 1)
    total = 0.0
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        x, y = x0 + dx, y0 + dy
        weight = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy)
        inside = (x >= 0) & (x < lim_w) & (y >= 0) & (y < lim_h)
        rows = base + jnp.clip(y, 0, height - 1) * width + jnp.clip(x, 0, width - 1)
        value = table.at[rows].get(mode="promise_in_bounds").astype(jnp.float32)
        total = total + jnp.where(inside, weight * value, 0.0)
    return total


__all__ = ["crop_resize_targets", "point_targets"]
