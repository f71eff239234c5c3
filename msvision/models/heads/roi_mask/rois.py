"""The RoIs of the mask heads: training RoIs, the unique-query inference buffer, RoI checks
and metrics (thesis §5.3.3 for EffSeg, §5.4.1 for the ++ baselines, which share EffSeg's
detector coupling; released code: ``EffSegHead.compute_losses`` and ``BaseSegHead``,
DetSeg ``models/heads/seg/effseg.py`` and ``base.py``).

Training RoIs (as the released code): the stage-2 positive queries of the detector, each
with its predicted box (no gradient, unclipped) and the ground-truth mask of its matched object.
Their number varies per image; a head runs on a fixed capacity of ``capacity``
RoIs per image (static shapes):

- positives are ordered by their rank among the positives of the same object (by the
  IoU of their box prior with the object, best first), then by object slot, so a
  capacity of R keeps the ⌈R / n_objects⌉ best queries of every object before any
  object gets more (i.e. drop by (rank in the gt's top-k, gt));
- the first ``capacity`` of that order are kept; the rest are dropped and COUNTED
  (``num_dropped``, logged as ``seg/dropped_rois``, :func:`roi_metrics`); the loss is
  normalised by the kept count (the released code's ``num_matches``).

How to choose the capacity: it bounds the positives per image, at most ``match_topk``
(15) × objects and at most the number of queries. The released logs report about 20 %
of 300 queries (FQDet) and 5 % of 1500 (FQDetV2) matched on COCO (DetSeg
``outputs/main/**/log.txt``), i.e. 60–75 per image on average; the thesis configs use
128 per image so that only crowded images overflow, and the overflow metric says how
often.

Inference RoIs: one RoI per distinct detected query (:func:`gather_inference_rois`; a
query may be detected with several classes, the released code does the same), or per
distinct (query, class) pair for a head whose trunk is class-specific
(:func:`gather_class_inference_rois`); :func:`per_detection` maps RoI slots back to the
detections.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from msvision.structures import Batch, Detections, QueryOutputs

Array = jax.Array


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


class RoIInputs(NamedTuple):
    """RoIs of a batch, R slots per image: ``boxes [B, R, 4]`` float32 (padded-input pixels,
    no gradient), ``queries [B, R, D]``, ``valid [B, R]`` bool."""

    boxes: Array
    queries: Array
    valid: Array


# --- checks -------------------------------------------------------------------------------


def check_pyramid_levels(head: str, levels: Sequence[int], needed: Sequence[int]) -> None:
    """Raises ValueError when the neck's ``levels`` lack one of the ``needed`` levels."""
    missing = [l for l in needed if l not in tuple(levels)]
    if missing:
        raise ValueError(f"{head} reads pyramid levels {list(needed)}; the neck has {tuple(levels)}")


def require_masks(batch: Batch, head: str) -> None:
    """Raises ValueError when the batch carries no ground-truth masks (``head`` names the head)."""
    if batch.masks is None:
        raise ValueError(f"{head} needs ground-truth masks: set data.with_masks=True")


# --- training RoIs ----------------------------------------------------------------------


def _take(x: Array, index: Array) -> Array:
    """``x [B, N, ...]`` at ``index [B, R]`` along axis 1 → ``[B, R, ...]``."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


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


def roi_labels(batch: Batch, gt_index: Array) -> Array:
    """``[B, R] int32`` class label of each RoI's object."""
    return jnp.take_along_axis(jnp.asarray(batch.labels, jnp.int32), gt_index, axis=1)


def gather_train_rois(queries: QueryOutputs, batch: Batch, capacity: int,
                      head: str = "a mask head") -> tuple[RoIInputs, TrainRoIs, Array]:
    """The training RoIs (:func:`select_train_rois`), their inputs and ``labels [B, R] int32``
    (the class of each RoI's object). Raises ValueError without ground-truth masks."""
    require_masks(batch, head)
    rois = select_train_rois(queries, capacity)
    boxes = jax.lax.stop_gradient(_take(queries.boxes, rois.query_index).astype(jnp.float32))
    inputs = RoIInputs(boxes, _take(queries.queries, rois.query_index), rois.valid)
    return inputs, rois, roi_labels(batch, rois.gt_index)


def roi_metrics(rois: TrainRoIs) -> dict[str, Array]:
    """Training-RoI metrics: kept RoIs per image, RoIs dropped by the capacity, positives."""
    return {"seg/rois_per_image": jnp.mean(jnp.sum(rois.valid, axis=1).astype(jnp.float32)),
            "seg/dropped_rois": jnp.sum(rois.num_dropped).astype(jnp.float32),
            "seg/positive_queries": jnp.sum(rois.num_positive).astype(jnp.float32)}


# --- inference RoIs ---------------------------------------------------------------------


def unique_queries(query_ids: Array, valid: Array, num_queries: int, num_slots: int) -> tuple[Array, Array, Array]:
    """One RoI per distinct detected query (a query may be detected with several classes;
    the released code does the same).

    Args:
      query_ids: ``[K]`` int32 query of each detection; valid: ``[K]`` bool.
      num_queries: Q (the fill value of unused slots); num_slots: static RoI capacity (K).

    Returns:
      rois ``[num_slots]`` int32 distinct queries (ascending, Q in unused slots),
      roi_valid ``[num_slots]`` bool, inverse ``[K]`` int32 RoI slot of each detection.
    """
    ids = jnp.where(valid, query_ids, num_queries)
    rois, inverse = jnp.unique(ids, size=num_slots, fill_value=num_queries, return_inverse=True)
    return rois.astype(jnp.int32), rois < num_queries, inverse.reshape(-1).astype(jnp.int32)


def gather_inference_rois(queries: QueryOutputs, dets: Detections) -> tuple[RoIInputs, Array]:
    """One RoI per distinct detected query and ``inverse [B, K] int32``, each detection's RoI slot
    (K = R = the detection capacity)."""
    num_dets = dets.valid.shape[1]
    num_queries = queries.queries.shape[1]
    slots, valid, inverse = jax.vmap(lambda q, v: unique_queries(q, v, num_queries, num_dets))(
        queries.detection_queries, dets.valid)
    safe = jnp.minimum(slots, num_queries - 1)
    boxes = _take(queries.boxes, safe).astype(jnp.float32)
    return RoIInputs(boxes, _take(queries.queries, safe), valid), inverse


def gather_class_inference_rois(queries: QueryOutputs, dets: Detections,
                                num_classes: int) -> tuple[RoIInputs, Array, Array]:
    """One RoI per distinct detected (query, class) pair, for a head whose trunk is
    class-specific: the RoIs, their ``labels [B, R] int32`` (0 in unused slots) and
    ``inverse [B, K] int32``, each detection's RoI slot (K = R = the detection capacity)."""
    num_dets = dets.valid.shape[1]
    num_queries = queries.queries.shape[1]
    pairs = queries.detection_queries.astype(jnp.int32) * num_classes + jnp.clip(dets.labels, 0, num_classes - 1)
    slots, valid, inverse = jax.vmap(
        lambda q, v: unique_queries(q, v, num_queries * num_classes, num_dets))(pairs, dets.valid)
    safe = jnp.minimum(slots // num_classes, num_queries - 1)
    labels = jnp.where(valid, slots % num_classes, 0)
    boxes = _take(queries.boxes, safe).astype(jnp.float32)
    return RoIInputs(boxes, _take(queries.queries, safe), valid), labels, inverse


def per_detection(x: Array, inverse: Array) -> Array:
    """``x [B, R, ...]`` per RoI slot → ``[B, K, ...]`` per detection (``inverse [B, K]``)."""
    return _take(x, inverse)


__all__ = ["TrainRoIs", "RoIInputs", "check_pyramid_levels", "require_masks", "positive_priority",
           "select_train_rois", "roi_labels", "gather_train_rois", "roi_metrics", "unique_queries",
           "gather_inference_rois", "gather_class_inference_rois", "per_detection"]
