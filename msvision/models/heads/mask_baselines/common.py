"""What the ++ baselines share with EffSeg (thesis §5.4.1): RoIs, query fusion,
class-specific losses and eq. 5.3 scoring.

- :func:`gather_train_rois`: EffSeg's training RoIs (fixed capacity, overflow counted) with
  their boxes, queries and object classes.
- :func:`gather_inference_rois`: EffSeg's unique-query buffer (one RoI per distinct detected
  query, as the released code) — the class-agnostic part of a mask runs once per query, the
  class-specific part per detection (a query detected with two classes gets two masks).
- :func:`per_roi_bce`: sigmoid BCE, mean per RoI, summed over the RoIs of an image,
  averaged over images (the released code's ``loss / (28·28)`` summed over RoIs, DetSeg
  ``models/heads/seg/mmdet_roi.py``, at one image per GPU, thesis §5.4.1).
- :func:`score_and_sort` (from :mod:`msvision.models.heads.effseg.postprocess`): EffSeg's eq. 5.3 score ``s_cls · mean(p | p > 0.5)`` of the
  pasted masks, then the detections re-sorted (as :meth:`EffSegHead.predict`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from msvision.models.heads.effseg.postprocess import score_and_sort, unique_queries
from msvision.models.heads.effseg.targets import TrainRoIs, select_train_rois
from msvision.models.heads.mask_baselines.targets import roi_labels
from msvision.ops import losses as loss_ops
from msvision.structures import Batch, Detections, QueryOutputs

Array = jax.Array


class RoIInputs(NamedTuple):
    """RoIs of a batch, R slots per image: ``boxes [B, R, 4]`` float32 (padded-input pixels,
    no gradient), ``queries [B, R, D]``, ``valid [B, R]`` bool."""

    boxes: Array
    queries: Array
    valid: Array


def _take(x: Array, index: Array) -> Array:
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def gather_train_rois(queries: QueryOutputs, batch: Batch, capacity: int) -> tuple[RoIInputs, TrainRoIs, Array]:
    """The training RoIs (:func:`select_train_rois`), their inputs and ``labels [B, R] int32``."""
    if batch.masks is None:
        raise ValueError("a mask head needs ground-truth masks: set data.with_masks=True")
    rois = select_train_rois(queries, capacity)
    boxes = jax.lax.stop_gradient(_take(queries.boxes, rois.query_index).astype(jnp.float32))
    inputs = RoIInputs(boxes, _take(queries.queries, rois.query_index), rois.valid)
    return inputs, rois, roi_labels(batch, rois.gt_index)


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


def per_detection(x: Array, inverse: Array) -> Array:
    """``x [B, R, ...]`` per RoI slot → ``[B, K, ...]`` per detection."""
    return _take(x, inverse)


def pick_class(logits: Array, labels: Array) -> Array:
    """``logits [B, R, ..., num_classes]`` at each RoI's class ``labels [B, R]`` → ``[B, R, ...]``."""
    index = labels.reshape(labels.shape + (1,) * (logits.ndim - labels.ndim))
    return jnp.take_along_axis(logits, index, axis=-1)[..., 0]


def detection_masks(logits: Array, inverse: Array, labels: Array) -> Array:
    """``logits [B, R, ..., num_classes]`` per RoI slot → ``[B, K, ...]`` each detection's
    RoI ``inverse [B, K]`` at its class ``labels [B, K]`` (one gather)."""
    b = jnp.arange(logits.shape[0])[:, None]
    middle = (slice(None),) * (logits.ndim - 3)
    return logits[(b, inverse) + middle + (labels,)]


def per_roi_bce(logits: Array, targets: Array, valid: Array) -> Array:
    """Scalar: mean over images of Σ_RoIs mean-per-RoI sigmoid BCE.

    Args:
      logits, targets: ``[B, R, ...]`` float32 (targets in [0, 1]); valid: ``[B, R]`` bool.
    """
    bce = loss_ops.sigmoid_bce_loss(logits.astype(jnp.float32), targets.astype(jnp.float32))
    per_roi = jnp.mean(bce.reshape(bce.shape[:2] + (-1,)), axis=-1)
    return jnp.mean(jnp.sum(jnp.where(valid, per_roi, 0.0), axis=1))


def accuracy(logits: Array, targets: Array, valid: Array) -> Array:
    """Fraction of the valid RoIs' cells (or points) where ``logit > 0`` equals ``target > 0.5``."""
    correct = (logits > 0) == (targets > 0.5)
    mask = jnp.broadcast_to(valid.reshape(valid.shape + (1,) * (logits.ndim - 2)), logits.shape)
    return jnp.sum(correct & mask) / jnp.maximum(jnp.sum(mask), 1)


def roi_metrics(rois: TrainRoIs) -> dict[str, Array]:
    """EffSeg's training-RoI metrics (capacity overflow)."""
    return {"seg/rois_per_image": jnp.mean(jnp.sum(rois.valid, axis=1).astype(jnp.float32)),
            "seg/dropped_rois": jnp.sum(rois.num_dropped).astype(jnp.float32),
            "seg/positive_queries": jnp.sum(rois.num_positive).astype(jnp.float32)}


__all__ = ["RoIInputs", "gather_train_rois", "gather_inference_rois", "per_detection", "pick_class", "detection_masks",
           "per_roi_bce", "accuracy", "roi_metrics", "score_and_sort"]
