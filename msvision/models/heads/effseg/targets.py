"""Training RoIs and per-cell mask targets of the EffSeg head (thesis §5.3.3; released code:
``EffSegHead.compute_losses``, DetSeg ``models/heads/seg/effseg.py``).

Training RoIs (as the released code): the stage-2 positive queries of the detector, each
with its predicted box (no gradient, unclipped) and the ground-truth mask of its matched object.
Their number varies per image; the head runs on a fixed capacity of ``capacity``
RoIs per image (static shapes):

- positives are ordered by their rank among the positives of the same object (by the
  IoU of their box prior with the object, best first), then by object slot, so a
  capacity of R keeps the ⌈R / n_objects⌉ best queries of every object before any
  object gets more (i.e. drop by (rank in the gt's top-k, gt));
- the first ``capacity`` of that order are kept; the rest are dropped and COUNTED
  (``num_dropped``, logged as ``seg/dropped_rois``); the loss is normalised by the
  kept count (the released code's ``num_matches``).

How to choose the capacity: it bounds the positives per image, at most ``match_topk``
(15) × objects and at most the number of queries. The released logs report about 20 %
of 300 queries (FQDet) and 5 % of 1500 (FQDetV2) matched on COCO (DetSeg
``outputs/main/**/log.txt``), i.e. 60–75 per image on average; the thesis configs use
128 per image so that only crowded images overflow, and the overflow metric says how
often.

Mask targets (per stage s, an S_s × S_s grid, S_s = 14·2^s, over every RoI):

- ``seg_target='centre'`` (thesis §5.3.3, the default): the ground-truth mask sampled
  at the cell centre (:func:`~msvision.ops.roi_align.roi_mask_centre_values`);
  ``'average'`` (released code): v > 0.5 with v the RoIAlign average of the
  mask over the cell (:func:`~msvision.ops.roi_align.roi_mask_targets`);
- refinement target (both): the cell holds foreground and background, 0 < v < 1
  (with a margin of ``MIXED_EPS`` for float32 rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from msvision.ops.roi_align import roi_mask_centre_values, roi_mask_targets
from msvision.structures import QueryOutputs

Array = jax.Array

SEG_TARGETS = ("centre", "average")
MIXED_EPS = 1e-4
COVERAGE_SCALE = 255.0  # box-frame grids hold coverage × 255 (msvision.data.box_masks)


@struct.dataclass
class TrainRoIs:
    """The training RoIs of a batch, ``capacity`` slots per image.

    query_index: ``[B, R] int32`` query of each slot (0 where invalid).
    gt_index: ``[B, R] int32`` ground-truth slot of its object.
    valid: ``[B, R] bool``; the valid slots come first.
    num_positive: ``[B] int32`` positives before the capacity; num_dropped: ``[B] int32``.
    """

    query_index: Array
    gt_index: Array
    valid: Array
    num_positive: Array
    num_dropped: Array


def positive_priority(matched: Array, positive: Array, quality: Array) -> Array:
    """``[B, Q] int32`` keep-order key of every query (lower first; non-positives last).

    key = rank · (M + 1) + gt slot, where rank is the number of positives of the same
    object with a higher ``quality`` (ties: lower query index), so the best query of
    every object comes before the second best of any.
    """
    q = matched.shape[1]
    same = (matched[:, :, None] == matched[:, None, :]) & positive[:, None, :]
    index = jnp.arange(q)
    better = (quality[:, None, :] > quality[:, :, None]) | (
        (quality[:, None, :] == quality[:, :, None]) & (index[None, None, :] < index[None, :, None]))
    rank = jnp.sum(same & better, axis=-1).astype(jnp.int32)
    num_slots = jnp.max(matched) + 2
    return jnp.where(positive, rank * num_slots + matched, jnp.iinfo(jnp.int32).max)


def select_train_rois(queries: QueryOutputs, capacity: int) -> TrainRoIs:
    """The first ``capacity`` positives of every image in :func:`positive_priority` order."""
    positive = queries.positive
    num_queries = positive.shape[1]
    capacity = min(int(capacity), num_queries)
    quality = queries.match_quality if queries.match_quality is not None else jnp.zeros(positive.shape)
    key = positive_priority(queries.matched, positive, quality)
    order = jnp.argsort(key, axis=1, stable=True)[:, :capacity].astype(jnp.int32)
    valid = jnp.take_along_axis(positive, order, axis=1)
    num_positive = jnp.sum(positive, axis=1).astype(jnp.int32)
    num_kept = jnp.sum(valid, axis=1).astype(jnp.int32)
    return TrainRoIs(
        query_index=jnp.where(valid, order, 0),
        gt_index=jnp.where(valid, jnp.take_along_axis(queries.matched, order, axis=1), 0),
        valid=valid,
        num_positive=num_positive,
        num_dropped=num_positive - num_kept,
    )


def mask_targets(masks: Array, boxes: Array, gt_index: Array, num_stages: int = 3, base_resolution: int = 14,
                 seg_target: str = "centre", mask_stride: float = 1.0, image_sizes: Array | None = None,
                 mask_boxes: Array | None = None) -> list[tuple[Array, Array]]:
    """Segmentation and refinement targets of every stage.

    Args:
      masks: ``[B, M, Hm, Wm]`` bool ground-truth masks (``Batch.masks``; float
        coverage in [0, 1] also works), pixel (i, j) covering image pixels
        ``[j s, (j+1) s) × [i s, (i+1) s)`` for ``s = mask_stride``; or, with
        ``mask_boxes``, box-frame coverage grids ``[B, M, S, S]`` uint8 (0..255).
      boxes: ``[B, R, 4]`` float RoI boxes ``(x0, y0, x1, y1)`` in input pixels.
      gt_index: ``[B, R]`` int32 mask of each RoI.
      image_sizes: optional ``[B, 2]`` (h, w) of the images inside the padding.
      mask_boxes: optional ``[B, M, 4]`` float the box each box-frame grid covers
        (``Batch.mask_boxes``, :mod:`msvision.data.box_masks`). The grids get a
        one-cell zero border (a mask is zero outside its box) and the RoI boxes are
        mapped into grid cells.

    Returns:
      per stage s = 0..num_stages: ``(seg [B, R, S, S] bool, refine [B, R, S, S] bool)``,
      S = base_resolution · 2^s.
    """
    if seg_target not in SEG_TARGETS:
        raise ValueError(f"seg_target must be one of {SEG_TARGETS}, got {seg_target!r}")
    boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
    scale = 1.0
    if mask_boxes is not None:
        masks, boxes = _into_box_frames(masks, mask_boxes, boxes, gt_index)
        mask_stride, image_sizes = 1.0, None
        scale = 1.0 / COVERAGE_SCALE
    finest = base_resolution * 2 ** num_stages
    averages = roi_mask_targets(masks, boxes, gt_index, mask_stride, finest, num_stages + 1,
                                image_sizes=image_sizes)[::-1]  # coarse to fine
    out = []
    for s, v in enumerate(averages):
        v = v * scale
        if seg_target == "centre":
            size = base_resolution * 2 ** s
            centre = roi_mask_centre_values(masks, boxes, gt_index, size, mask_stride, image_sizes) * scale
            seg = centre > 0.5
        else:
            seg = v > 0.5
        # 0 < v < 1 up to float32 rounding (bilinear weights of a constant region sum to 1 ± 1 ulp).
        out.append((seg, (v > MIXED_EPS) & (v < 1.0 - MIXED_EPS)))
    return out


def _into_box_frames(masks: Array, mask_boxes: Array, boxes: Array, gt_index: Array) -> tuple[Array, Array]:
    """Box-frame grids with a zero border, and the RoI boxes in their cell coordinates."""
    size = masks.shape[-1]
    padded = jnp.pad(masks, ((0, 0), (0, 0), (1, 1), (1, 1)))
    frame = jnp.take_along_axis(mask_boxes.astype(jnp.float32), gt_index[..., None], axis=1)  # [B, R, 4]
    origin = frame[..., :2]
    cells_per_pixel = size / jnp.maximum(frame[..., 2:] - frame[..., :2], 1e-6)
    lo = (boxes[..., :2] - origin) * cells_per_pixel + 1.0
    hi = (boxes[..., 2:] - origin) * cells_per_pixel + 1.0
    return padded, jnp.concatenate([lo, hi], axis=-1)


__all__ = ["TrainRoIs", "positive_priority", "select_train_rois", "mask_targets", "SEG_TARGETS"]
