"""FQDet losses (thesis 4.4.1, 4.5.2; released code: DetSeg ``models/modules/selector.py``,
``models/heads/cls/base.py`` and ``models/heads/box2d/base.py``).

  selection  sigmoid focal loss (α 0.25, γ 2) on every anchor's top-k label.
  cls        'focal' (V1): sigmoid focal on the K+1 outputs with one-hot targets,
             the no-object column is the target of unmatched queries (as released);
             'qfl' (V2): quality focal loss (β 2) with soft label IoU(predicted box
             (no gradient), gt box) on the gt class.
  box        'l1' on Faster R-CNN deltas (V1) | 'giou' | 'diou' | 'ciou' | 'eiou'
             (mmdet's Extended-IoU ``EIoULoss``) on decoded boxes; positives only.
  box score  (V2) L1 between a logit and inverse_sigmoid(IoU(pred, gt), eps 1e-3).
  duplicate  (learned duplicate removal, 4.5.2) BCE on query pairs: pairs matched to
             the same gt are duplicates, pairs matched to different gts are not.

Weights left at ``None`` take the loss's own weight from the thesis (4.5.2, tables
4.14 and 4.16): cls focal 1, QFL 0.5; box L1 1, GIoU/DIoU/CIoU 1.3, EIoU 1.85 — so
``--config.model.head.loss.box=giou`` trains with weight 1.3.

Reduction (``reduction``): 'sum' (released code, DetSeg ``engine.py``, ``train``: every loss summed over
anchors/queries; we average the per-image sums over the batch, which equals the
author's per-GPU sum averaged by DDP at one image per GPU) | 'mean_per_gt' (sums
divided by the number of real gt boxes in the batch, at least 1).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from msvision.ops import losses as loss_ops
from msvision.ops.boxes import elementwise_box_iou, encode_box_deltas
from msvision.ops.queries import inverse_sigmoid
from msvision.structures import Batch

Array = jax.Array

CLS_LOSSES = ("focal", "qfl")
BOX_LOSSES = ("l1", "giou", "diou", "ciou", "eiou")
DEFAULT_CLS_WEIGHTS = {"focal": 1.0, "qfl": 0.5}
DEFAULT_BOX_WEIGHTS = {"l1": 1.0, "giou": 1.3, "diou": 1.3, "ciou": 1.3, "eiou": 1.85}
REDUCTIONS = ("sum", "mean_per_gt")
BOX_LOSS_FNS = {"giou": loss_ops.giou_loss, "diou": loss_ops.diou_loss, "ciou": loss_ops.ciou_loss,
                "eiou": loss_ops.eiou_loss}


@dataclasses.dataclass(frozen=True)
class FQDetCriterion:
    """The losses (config section ``model.head.loss``; module docstring)."""

    sel_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cls: str = "focal"
    cls_weight: Optional[float] = None
    qfl_beta: float = 2.0
    box: str = "l1"
    box_weight: Optional[float] = None
    box_score_weight: float = 0.2
    box_score_eps: float = 1e-3
    duplicate_weight: float = 1.0
    reduction: str = "sum"

    def __post_init__(self):
        for name, value, allowed in (("cls", self.cls, CLS_LOSSES), ("box", self.box, BOX_LOSSES),
                                     ("reduction", self.reduction, REDUCTIONS)):
            if value not in allowed:
                raise ValueError(f"loss.{name} must be one of {allowed}, got {value!r}")

    @property
    def cls_loss_weight(self) -> float:
        return DEFAULT_CLS_WEIGHTS[self.cls] if self.cls_weight is None else self.cls_weight

    @property
    def box_loss_weight(self) -> float:
        return DEFAULT_BOX_WEIGHTS[self.box] if self.box_weight is None else self.box_weight

    def reduce(self, per_image_sums: Array, num_gt: Array) -> Array:
        """``[B]`` per-image loss sums → scalar (see ``reduction``)."""
        if self.reduction == "sum":
            return jnp.mean(per_image_sums)
        return jnp.sum(per_image_sums) / jnp.maximum(num_gt, 1.0)

    def selection_loss(self, logits: Array, positive: Array, ignore: Array, num_gt: Array) -> Array:
        """``logits [B, N]`` float32, ``positive``/``ignore [B, N]`` bool → scalar."""
        loss = loss_ops.sigmoid_focal_loss(logits, positive.astype(jnp.float32), self.focal_alpha, self.focal_gamma)
        return self.sel_weight * self.reduce(jnp.where(ignore, 0.0, loss).sum(-1), num_gt)

    def output_losses(self, out: dict, matched: Array, positive: Array, ignore: Array, batch: Batch,
                      num_classes: int, num_gt: Array) -> dict[str, Array]:
        """Classification, box and box-score losses of one decoder output.

        Args:
          out: ``cls [B, Q, K+1]``, ``deltas [B, Q, 4]``, ``boxes [B, Q, 4]`` pixels,
            ``box_score [B, Q]`` or None, ``priors [B, Q, 4]``.
          matched, positive, ignore: ``[B, Q]`` stage-2 targets.

        Returns:
          ``loss_cls``, ``loss_box`` and (box scoring) ``loss_box_score`` scalars.
        """
        k = num_classes
        gt_boxes = jnp.take_along_axis(jnp.asarray(batch.boxes, jnp.float32), matched[..., None], axis=1)
        gt_labels = jnp.take_along_axis(jnp.asarray(batch.labels), matched, axis=1)
        gt_boxes = jnp.where(positive[..., None], gt_boxes, out["priors"])  # never degenerate
        pred_iou = elementwise_box_iou(jax.lax.stop_gradient(out["boxes"]), gt_boxes)  # [B, Q]

        onehot = jax.nn.one_hot(jnp.where(positive, gt_labels, k), k + 1, dtype=jnp.float32)
        if self.cls == "focal":
            cls = loss_ops.sigmoid_focal_loss(out["cls"], onehot, self.focal_alpha, self.focal_gamma)
        else:
            soft = onehot * jnp.where(positive, pred_iou, 1.0)[..., None]
            cls = loss_ops.quality_focal_loss(out["cls"], soft, self.qfl_beta)
        cls = jnp.where(ignore, 0.0, cls.sum(-1))

        if self.box == "l1":
            box = loss_ops.l1_loss(out["deltas"], encode_box_deltas(gt_boxes, out["priors"])).sum(-1)
        else:
            box = BOX_LOSS_FNS[self.box](out["boxes"], gt_boxes)
        box = jnp.where(positive, box, 0.0)

        losses = {
            "loss_cls": self.cls_loss_weight * self.reduce(cls.sum(-1), num_gt),
            "loss_box": self.box_loss_weight * self.reduce(box.sum(-1), num_gt),
        }
        if out["box_score"] is not None:
            target = inverse_sigmoid(pred_iou, self.box_score_eps)
            score = jnp.where(positive, jnp.abs(out["box_score"] - target), 0.0)
            losses["loss_box_score"] = self.box_score_weight * self.reduce(score.sum(-1), num_gt)
        return losses

    def duplicate_loss(self, logits: Array, matched: Array, positive: Array, num_gt: Array) -> Array:
        """``logits [B, Q, Q]`` duplicate logits of query pairs → scalar (thesis 4.5.2)."""
        same = (matched[:, :, None] == matched[:, None, :]).astype(jnp.float32)
        q = positive.shape[1]
        pair = positive[:, :, None] & positive[:, None, :] & ~jnp.eye(q, dtype=bool)[None]
        bce = jnp.where(pair, loss_ops.sigmoid_bce_loss(logits, same), 0.0).sum((1, 2))
        return self.duplicate_weight * self.reduce(bce, num_gt)
