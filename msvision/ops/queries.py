"""Query-level ops of query-based two-stage heads (FQDet/FQDetV2, thesis chapter 4).

Pure functions on arrays with static shapes:

- :func:`select_topk_queries`: the fixed-size top-N selection of stage 1.
- :func:`inverse_sigmoid`: Deformable DETR's ``inverse_sigmoid`` (box-score targets).
- :func:`focal_class_cost`, :func:`detr_matching_cost`: the Hungarian matching cost
  of (two-stage) Deformable DETR, for the thesis's matching ablation (table 4.5).
- :func:`topk_class_pairs`: the candidate list of the 'query_class_pairs' inference
  (every (query, class) pair scored, the best kept; thesis section 4.4.3).

Conventions: boxes ``(x0, y0, x1, y1)`` in pixels; one image per call unless a
leading batch dimension ``B`` is documented.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msvision.ops.boxes import box_xyxy_to_cxcywh, generalized_box_iou

Array = jnp.ndarray


def select_topk_queries(scores: Array, valid: Array, k: int) -> tuple[Array, Array]:
    """The ``k`` highest-scoring valid entries of every row (stage-1 query selection).

    Args:
      scores: ``[B, N]`` float (logits or probabilities; only the order matters).
      valid: ``[B, N]`` bool; invalid entries (e.g. anchors centred in the padding)
        are never selected while a row has at least ``k`` valid entries.
      k: static number of selections, ``k <= N``.

    Returns:
      indices: ``[B, k]`` int32, by descending score (ties: lower index first).
      top_scores: ``[B, k]`` their scores (``-inf`` where a row had fewer than ``k``
        valid entries).
    """
    if k > scores.shape[-1]:
        raise ValueError(f"cannot select {k} queries out of {scores.shape[-1]} anchors")
    masked = jnp.where(valid, scores, -jnp.inf)
    top_scores, indices = jax.lax.top_k(masked, k)
    return indices.astype(jnp.int32), top_scores


def inverse_sigmoid(x: Array, eps: float = 1e-3) -> Array:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[0, 1]`` and both terms to ``>= eps``.

    Deformable DETR's ``inverse_sigmoid`` (default ``eps`` there 1e-5; the author's
    FQDetV2 box-score target uses 1e-3, DetSeg ``models/heads/box2d/base.py``,
    ``BaseBox2dHead.forward_loss``).
    """
    x = jnp.clip(x, 0.0, 1.0)
    return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


def focal_class_cost(
    class_logits: Array, gt_labels: Array, alpha: float = 0.25, gamma: float = 2.0
) -> Array:
    """Deformable DETR's focal classification cost.

    ``cost[q, m] = alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p))``
    with ``p = sigmoid(class_logits[q, gt_labels[m]])``.

    Args:
      class_logits: ``[Q, K]`` (object classes only, no background column).
      gt_labels: ``[M]`` int32.

    Returns:
      ``[Q, M]`` float32.
    """
    p = jax.nn.sigmoid(class_logits.astype(jnp.float32))
    neg = (1 - alpha) * p**gamma * -jnp.log(1 - p + 1e-8)
    pos = alpha * (1 - p) ** gamma * -jnp.log(p + 1e-8)
    return jnp.take(pos - neg, gt_labels, axis=1)


def detr_matching_cost(
    class_logits: Array,
    pred_boxes: Array,
    gt_boxes: Array,
    gt_labels: Array,
    image_hw: Array,
    *,
    class_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> Array:
    """(Deformable) DETR Hungarian cost: class + L1 on normalised cxcywh + (-GIoU).

    Args:
      class_logits: ``[Q, K]`` object-class logits.
      pred_boxes: ``[Q, 4]``; gt_boxes: ``[M, 4]`` pixels ``(x0, y0, x1, y1)``.
      gt_labels: ``[M]`` int32.
      image_hw: ``[2]`` ``(h, w)`` used to normalise the boxes for the L1 term.
      class_weight, l1_weight, giou_weight: Deformable DETR's 2, 5, 2.

    Returns:
      ``[Q, M]`` float32 cost (lower is better).
    """
    hw = jnp.asarray(image_hw, jnp.float32)
    scale = jnp.stack([hw[1], hw[0], hw[1], hw[0]])
    pred = box_xyxy_to_cxcywh(pred_boxes.astype(jnp.float32)) / scale
    gt = box_xyxy_to_cxcywh(gt_boxes.astype(jnp.float32)) / scale
    l1 = jnp.sum(jnp.abs(pred[:, None, :] - gt[None, :, :]), axis=-1)
    giou = generalized_box_iou(pred_boxes.astype(jnp.float32), gt_boxes.astype(jnp.float32))
    cls = focal_class_cost(class_logits, gt_labels)
    return class_weight * cls + l1_weight * l1 - giou_weight * giou


def topk_class_pairs(scores: Array, k: int) -> tuple[Array, Array, Array]:
    """The ``k`` best (query, class) pairs of every image ('query_class_pairs' inference).

    Args:
      scores: ``[B, Q, K]`` detection scores per query and class.
      k: static; clipped to ``Q * K``.

    Returns:
      query_ids ``[B, k]`` int32, labels ``[B, k]`` int32, pair_scores ``[B, k]``,
      by descending score (ties: lower query, then lower class first).
    """
    b, q, num_classes = scores.shape
    k = min(k, q * num_classes)
    top_scores, flat = jax.lax.top_k(scores.reshape(b, q * num_classes), k)
    return (flat // num_classes).astype(jnp.int32), (flat % num_classes).astype(jnp.int32), top_scores
