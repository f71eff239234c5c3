"""FQDet inference: scores → a fixed number of detections per image (thesis 4.4.3, 4.5.2).

Labels of the candidates (``labels``, thesis 4.4.3, table 4.6):
  'per_query_label'    one label per query (its best class), the ``nms_candidates``
                       best queries, class-aware NMS, the ``max_detections`` best kept
                       (the base FQDet's inference, thesis 4.4.1);
  'query_class_pairs'  every (query, class) pair is a candidate, the ``nms_candidates``
                       best pairs through class-aware NMS, ``max_detections`` kept (the
                       improved FQDet's inference of thesis 4.4.3, FQDetV2's and the
                       released code's ``BaseBox2dHead.compute_dets``).
Scores: ``sigmoid`` of the K class logits (no-object excluded), times
``sigmoid(box score)`` with box scoring. Boxes are clipped to the image and
dropped when empty.

Duplicate removal (``duplicate_removal``, table 4.19): 'nms'; 'learned' (drop a
candidate when a higher-scoring candidate of the same label is its duplicate with
probability > ``duplicate_threshold``); 'soft_learned' (multiply its score by
``Π (1 − d)^α``, α = ``soft_duplicate_power``, over higher-scoring candidates of
its label — a one-pass version of the thesis's sequential loop); 'learn_nms'
(learned duplicate loss during training, NMS at inference).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from msvision.ops.boxes import clip_boxes
from msvision.ops.nms import batched_nms_padded
from msvision.ops.queries import topk_class_pairs
from msvision.structures import Detections

Array = jax.Array

CANDIDATE_LABELS = ("per_query_label", "query_class_pairs")
DUPLICATE_REMOVAL = ("nms", "learned", "soft_learned", "learn_nms")


@dataclasses.dataclass(frozen=True)
class FQDetPostProcess:
    """Inference settings (config section ``model.head.inference``; module docstring)."""

    labels: str = "per_query_label"
    nms_iou: float = 0.5
    nms_candidates: int = 1000
    max_detections: int = 100
    duplicate_removal: str = "nms"
    duplicate_threshold: float = 0.5
    soft_duplicate_power: float = 2.0

    def __post_init__(self):
        if self.labels not in CANDIDATE_LABELS:
            raise ValueError(f"inference.labels must be one of {CANDIDATE_LABELS}, got {self.labels!r}")
        if self.duplicate_removal not in DUPLICATE_REMOVAL:
            raise ValueError(f"inference.duplicate_removal must be one of {DUPLICATE_REMOVAL}, "
                             f"got {self.duplicate_removal!r}")

    @property
    def learned_duplicates(self) -> bool:
        """The head needs a duplicate network (and its loss)."""
        return self.duplicate_removal != "nms"

    def __call__(self, out: dict, image_sizes: Array, num_classes: int,
                 duplicate_logits: Optional[Array] = None) -> Detections:
        """Detections in padded-input pixels, ``max_detections`` per image.

        Args:
          out: the last decoder output: ``cls [B, Q, K+1]``, ``boxes [B, Q, 4]``
            pixels, ``box_score [B, Q]`` or None.
          image_sizes: ``[B, 2]`` int ``(h, w)`` of the images inside the padding.
          duplicate_logits: ``[B, Q, Q]`` (learned duplicate removal only).
        """
        return self.select(out, image_sizes, num_classes, duplicate_logits)[0]

    def select(self, out: dict, image_sizes: Array, num_classes: int,
               duplicate_logits: Optional[Array] = None) -> tuple[Detections, Array]:
        """:meth:`__call__` plus ``[B, max_detections] int32``: the query of every detection
        (0 where invalid)."""
        scores = jax.nn.sigmoid(out["cls"][..., :num_classes])  # [B, Q, K]
        if out["box_score"] is not None:
            scores = scores * jax.nn.sigmoid(out["box_score"])[..., None]
        sizes = jnp.asarray(image_sizes, jnp.float32)
        boxes = clip_boxes(out["boxes"], sizes[:, None, :])
        box_ok = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        scores = jnp.where(box_ok[..., None], scores, -1.0)

        if self.labels == "query_class_pairs":
            query_ids, labels, cand_scores = topk_class_pairs(scores, self.nms_candidates)
        else:
            best = jnp.max(scores, axis=-1)
            cand_scores, query_ids = jax.lax.top_k(best, min(self.nms_candidates, best.shape[1]))
            labels = jnp.take_along_axis(jnp.argmax(scores, axis=-1), query_ids, axis=1).astype(jnp.int32)
        cand_valid = cand_scores >= 0
        cand_boxes = jnp.take_along_axis(boxes, query_ids[..., None], axis=1)

        use_nms = self.duplicate_removal in ("nms", "learn_nms")
        if not use_nms:
            cand_scores, cand_valid = self.learned_duplicate_removal(
                duplicate_logits, query_ids, labels, cand_scores, cand_valid)

        def select_one(b, s, l, v):
            if use_nms:
                return batched_nms_padded(b, s, l, self.nms_iou, self.max_detections, valid=v)
            m = min(self.max_detections, s.shape[0])
            top, idx = jax.lax.top_k(jnp.where(v, s, -1.0), m)
            keep_valid = top >= 0
            if m < self.max_detections:
                idx = jnp.pad(idx, (0, self.max_detections - m))
                keep_valid = jnp.pad(keep_valid, (0, self.max_detections - m))
            return idx.astype(jnp.int32), keep_valid

        keep, keep_valid = jax.vmap(select_one)(cand_boxes, cand_scores, labels, cand_valid)
        take = lambda x: jnp.take_along_axis(x, keep if x.ndim == 2 else keep[..., None], axis=1)  # noqa: E731
        dets = Detections(
            boxes=jnp.where(keep_valid[..., None], take(cand_boxes), 0.0),
            scores=jnp.where(keep_valid, take(cand_scores), 0.0),
            labels=jnp.where(keep_valid, take(labels), 0),
            valid=keep_valid,
        )
        return dets, jnp.where(keep_valid, take(query_ids.astype(jnp.int32)), 0)

    def learned_duplicate_removal(self, logits: Array, query_ids: Array, labels: Array, scores: Array,
                                  valid: Array) -> tuple[Array, Array]:
        """Learned / Soft-Learned duplicate removal on the candidate list (thesis 4.5.2).

        Args:
          logits: ``[B, Q, Q]`` duplicate logits of query pairs.
          query_ids, labels, scores, valid: ``[B, C]`` candidates.

        Returns:
          ``(scores, valid)`` of the candidates after removal.
        """
        dup = jax.nn.sigmoid(logits)
        d = jax.vmap(lambda m, i: m[i][:, i])(dup, query_ids)  # [B, C, C]
        c = scores.shape[1]
        order = jnp.arange(c)
        higher = (scores[:, None, :] > scores[:, :, None]) | (
            (scores[:, None, :] == scores[:, :, None]) & (order[None, None, :] < order[None, :, None])
        )  # [B, a, b]: b ranks above a
        pair = higher & (labels[:, :, None] == labels[:, None, :]) & valid[:, None, :]
        if self.duplicate_removal == "learned":
            drop = jnp.any(pair & (d > self.duplicate_threshold), axis=-1)
            return scores, valid & ~drop
        factor = jnp.prod(jnp.where(pair, (1.0 - d) ** self.soft_duplicate_power, 1.0), axis=-1)
        return jnp.where(valid, scores * factor, scores), valid
