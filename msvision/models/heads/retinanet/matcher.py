"""RetinaNet anchor targets (thesis 3.4.1; detectron2 ``RetinaNet.label_anchors``).

Absolute IoU matching (:func:`msvision.ops.matching.absolute_iou_matching`): an
anchor whose best IoU with a real gt box is ``≥ absolute_pos_iou`` (0.5) is
positive, ``< absolute_neg_iou`` (0.4) negative, ignored in between; with
``absolute_low_quality`` every gt's highest-IoU anchors are positive too, as
detectron2's ``allow_low_quality_matches``. The field names are those of FQDet's
matcher for the same rule (its ``matching='absolute'``), so one setting has one
name in both heads. Box targets: the matched gt box, encoded by the criterion as
Faster R-CNN deltas, weights (1, 1, 1, 1).

Ground truth: crowd boxes are never positives. Two rules that neither the thesis
nor the released code has are switches, off by default, with FQDet's names:
``crowd_ignore`` (anchors more than ``crowd_ioa_threshold`` (70 %) inside a crowd
box are ignored rather than negative) and ``ignore_padding_anchors`` (anchors of
feature cells outside the image's valid map are never negatives).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from msvision.ops.boxes import box_ioa, box_iou
from msvision.ops.matching import DEFAULT_CROWD_IOA_THRESHOLD, absolute_iou_matching
from msvision.structures import Batch

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RetinaNetMatcher:
    """Anchor targets (config section ``model.head.matcher``; module docstring)."""

    absolute_pos_iou: float = 0.5
    absolute_neg_iou: float = 0.4
    absolute_low_quality: bool = True
    crowd_ignore: bool = False
    crowd_ioa_threshold: float = DEFAULT_CROWD_IOA_THRESHOLD
    ignore_padding_anchors: bool = False

    def __call__(self, anchors: np.ndarray, batch: Batch, anchor_valid: Optional[Array] = None
                 ) -> tuple[Array, Array, Array]:
        """Anchor labels for a batch.

        Args:
          anchors: ``[N, 4]`` float32 pixels (padded input), all levels concatenated.
          batch: ground truth in padded-input pixels (``boxes [B, M, 4]``, ``labels``,
            ``valid``, ``is_crowd``).
          anchor_valid: ``[B, N]`` bool, anchor cell inside the image's valid map (used
            by ``ignore_padding_anchors``).

        Returns:
          match_label ``[B, N]`` int32 (1 positive, 0 negative, -1 ignore),
          cls_target ``[B, N]`` int32 class of the matched gt,
          box_target ``[B, N, 4]`` matched gt box (the anchor itself where not
          positive, so encoding never sees degenerate boxes).
        """
        anchors_j = jnp.asarray(anchors)
        gt_boxes = jnp.asarray(batch.boxes, jnp.float32)

        def match_one(boxes, valid, is_crowd):
            iou = box_iou(anchors_j, boxes)
            return absolute_iou_matching(
                iou, valid, pos_iou=self.absolute_pos_iou, neg_iou=self.absolute_neg_iou,
                allow_low_quality=self.absolute_low_quality, gt_is_crowd=is_crowd,
                crowd_ioa=box_ioa(anchors_j, boxes) if self.crowd_ignore else None,
                crowd_ioa_threshold=self.crowd_ioa_threshold,
            )

        matched, label = jax.vmap(match_one)(gt_boxes, jnp.asarray(batch.valid), jnp.asarray(batch.is_crowd))
        if self.ignore_padding_anchors and anchor_valid is not None:
            label = jnp.where((label == 0) & ~anchor_valid, -1, label)
        cls_target = jnp.take_along_axis(jnp.asarray(batch.labels), matched, axis=1)
        box_target = jnp.take_along_axis(gt_boxes, matched[..., None], axis=1)
        box_target = jnp.where((label == 1)[..., None], box_target, anchors_j[None])
        return label, cls_target, box_target
