"""Stage-1 and stage-2 targets of FQDet (thesis 4.3.3, 4.4.1; table 4.5).

Stage 1 (selection): static top-k — an anchor is positive when it is among the
``sel_topk`` (5) anchors of highest IoU with some ground-truth box, no IoU floor
(DetSeg ``models/modules/matcher.py``, ``BoxMatcher`` with ``SimMatcher``). The same IoU
ranking gives every gt's ``match_topk`` (15) candidate anchors for stage 2.

Stage 2 (``matching``):
  'topk'      a query is positive for gt g when its anchor is among g's top-15
              anchors; a query qualifying for several gts keeps the one where its
              rank is best; the rest are no-object (both thesis and DetSeg's ``TopMatcher``);
  'absolute'  Faster R-CNN IoU thresholds on the prior boxes: ``absolute_pos_iou``
              / ``absolute_neg_iou`` with or without low-quality matches
              (``absolute_low_quality``). The thesis's table 4.5 names Faster
              R-CNN's rule (0.7 / 0.3 with low-quality matches, the defaults); the
              released code uses 0.5 / 0.3 without low-quality matches;
  'hungarian' DETR's cost (class 2, L1 5, GIoU 2) solved exactly with scipy in a
              ``pure_callback``; 'auction' the same cost solved in-graph by an
              auction algorithm (:func:`msvision.ops.matching.auction_matching`).

Ground truth: crowd boxes are never positives. Rules neither the thesis nor the
released code has are switches, off by default: ``crowd_ignore`` (anchors/queries
whose prior lies > ``crowd_ioa_threshold`` inside a crowd box are ignored rather
than negative) and ``ignore_padding_anchors`` (anchors of cells outside the
image's valid feature map are ignored in the selection loss and never candidates;
the released code treats them as ordinary negatives).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from msvision.ops.boxes import box_ioa, box_iou
from msvision.ops.matching import (
    absolute_iou_matching,
    auction_matching,
    crowd_ignore_mask,
    hungarian_matching,
    topk_anchor_matching,
    topk_candidates_per_gt,
    topk_matching_from_candidates,
)
from msvision.ops.queries import detr_matching_cost
from msvision.structures import Batch

Array = jax.Array

MATCHINGS = ("topk", "absolute", "hungarian", "auction")


@dataclasses.dataclass(frozen=True)
class FQDetMatcher:
    """Targets of both stages (config section ``model.head.matcher``; module docstring)."""

    sel_topk: int = 5
    matching: str = "topk"
    match_topk: int = 15
    absolute_pos_iou: float = 0.7
    absolute_neg_iou: float = 0.3
    absolute_low_quality: bool = True
    hungarian_weights: tuple[float, float, float] = (2.0, 5.0, 2.0)
    crowd_ignore: bool = False
    crowd_ioa_threshold: float = 0.7
    ignore_padding_anchors: bool = False

    def __post_init__(self):
        if self.matching not in MATCHINGS:
            raise ValueError(f"matcher.matching must be one of {MATCHINGS}, got {self.matching!r}")

    def _crowd_ignore(self, priors: Array, gt_boxes: Array, valid: Array, crowd: Array) -> Array:
        """``[N] bool`` priors ignored for lying inside a crowd box (when ``crowd_ignore``)."""
        if not self.crowd_ignore:
            return jnp.zeros(priors.shape[:1], bool)
        return crowd_ignore_mask(box_ioa(priors, gt_boxes), valid, crowd, self.crowd_ioa_threshold)

    def selection_targets(self, anchors: np.ndarray, anchor_valid: Array, batch: Batch):
        """Stage-1 top-k targets and every gt's stage-2 candidate anchors.

        Args:
          anchors: ``[N, 4]`` float32 pixels (padded input).
          anchor_valid: ``[B, N]`` bool, anchor cell inside the image's valid feature map.
          batch: ground truth (``boxes [B, M, 4]``, ``valid``, ``is_crowd``).

        Returns:
          sel_positive ``[B, N]`` bool, sel_ignore ``[B, N]`` bool, candidates
          ``[B, M, match_topk]`` int32 anchor ids, candidate_valid ``[B, M, match_topk]``.
        """
        anchors_j = jnp.asarray(anchors)

        def one(boxes, valid, crowd, in_image):
            iou = box_iou(anchors_j, boxes)
            if self.ignore_padding_anchors:
                iou = jnp.where(in_image[:, None], iou, -1.0)
            _, positive = topk_anchor_matching(iou, valid, self.sel_topk, gt_is_crowd=crowd)
            ignore = self._crowd_ignore(anchors_j, boxes, valid, crowd)
            if self.ignore_padding_anchors:
                ignore = ignore | ~in_image
            cands, _, cand_valid = topk_candidates_per_gt(iou, valid, self.match_topk, gt_is_crowd=crowd)
            return positive, ignore & ~positive, cands, cand_valid

        return jax.vmap(one)(jnp.asarray(batch.boxes, jnp.float32), jnp.asarray(batch.valid),
                             jnp.asarray(batch.is_crowd), anchor_valid)

    def query_targets(self, out: dict, query_ids: Array, candidates: Array, candidate_valid: Array, batch: Batch,
                      num_classes: int):
        """Stage-2 matching of one supervised decoder output.

        Args:
          out: ``priors [B, Q, 4]``, ``cls [B, Q, K+1]``, ``boxes [B, Q, 4]`` pixels.
          query_ids: ``[B, Q]`` selected anchor ids.
          candidates, candidate_valid: from :meth:`selection_targets`.

        Returns:
          matched ``[B, Q]`` int32 gt slot, positive ``[B, Q]`` bool, ignore ``[B, Q]`` bool.
        """
        gt_boxes = jnp.asarray(batch.boxes, jnp.float32)
        valid, crowd = jnp.asarray(batch.valid), jnp.asarray(batch.is_crowd)
        priors = out["priors"]
        ignore = jax.vmap(self._crowd_ignore)(priors, gt_boxes, valid, crowd)
        if self.matching == "topk":

            def one(cands, cvalid, qids, p, boxes):
                return topk_matching_from_candidates(cands, cvalid, qids, box_iou(p, boxes))

            matched, positive = jax.vmap(one)(candidates, candidate_valid, query_ids, priors, gt_boxes)
        elif self.matching == "absolute":

            def one(p, boxes, v, c):
                return absolute_iou_matching(
                    box_iou(p, boxes), v, pos_iou=self.absolute_pos_iou, neg_iou=self.absolute_neg_iou,
                    allow_low_quality=self.absolute_low_quality, gt_is_crowd=c,
                    crowd_ioa=box_ioa(p, boxes) if self.crowd_ignore else None,
                    crowd_ioa_threshold=self.crowd_ioa_threshold,
                )

            matched, label = jax.vmap(one)(priors, gt_boxes, valid, crowd)
            positive = label == 1
            ignore = ignore | (label < 0)
        else:
            wc, wl, wg = self.hungarian_weights
            sizes = jnp.asarray(batch.image_sizes, jnp.float32)
            real = valid & ~crowd
            solver = hungarian_matching if self.matching == "hungarian" else auction_matching

            def one(cls, boxes, gt, labels, hw, r):
                cost = detr_matching_cost(cls[:, :num_classes], boxes, gt, labels, hw,
                                          class_weight=wc, l1_weight=wl, giou_weight=wg)
                return solver(cost, r)

            matched, positive = jax.vmap(one)(
                jax.lax.stop_gradient(out["cls"]), jax.lax.stop_gradient(out["boxes"]), gt_boxes,
                jnp.asarray(batch.labels), sizes, real,
            )
        return matched, positive, ignore & ~positive
