"""Mask R-CNN++ (thesis §5.4.1; released code: ``StandardRoIHead``, DetSeg
``models/heads/seg/mmdet_roi.py``).

Mask R-CNN's mask head (mmdet ``FCNMaskHead``) with EffSeg's RoIs, query fusion and
mask-score weighting:

  RoIAlign 14×14 (``roi_resolution``) from P_k0, k0 = 2 + min(⌊log2(√(wh)/56)⌋, 3)
  (eq. 5.1, P2–P5) → query fusion as EffSeg without the position encoding (as released)
  → ``roi_convs`` (4) × (3×3 conv + ReLU) → deconv ×2 + ReLU → 1×1 → ``num_classes``
  class-specific 28×28 logits.

Training: the positive queries (EffSeg's training RoIs, fixed capacity); the logits of
each RoI's object class against the crop-resized binary mask (:mod:`.targets`); sigmoid
BCE, mean per RoI, summed over RoIs (as released). Inference: the trunk runs once per distinct
detected query; each detection takes its class's 28×28 mask, pasted and scored by
eq. 5.3 (:mod:`msvision.models.heads.roi_mask.postprocess`, as EffSeg).

With C = 256 and 80 classes: 262,912 (query fusion) + 2,360,320 (convs) + 262,400
(deconv) + 20,560 (logits) = **2,906,192** parameters (2.9 M in thesis table 5.4).

Config (``model.seg_head``, name 'maskrcnn'): the constructor keywords below.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.heads.mask_baselines import class_logits
from msvision.models.heads.mask_baselines.modules import FCNMaskHead
from msvision.models.heads.mask_baselines.targets import crop_resize_targets
from msvision.models.heads.roi_mask import rois as roi_ops
from msvision.models.heads.roi_mask.features import QueryFusion, multilevel_roi_features
from msvision.models.heads.roi_mask.postprocess import RoIMaskPostProcess, score_and_sort
from msvision.structures import Batch, Detections, ImageBatch, QueryOutputs

Array = jax.Array


class MaskRCNNHead(nnx.Module):
    """Mask R-CNN++ (see the module docstring).

    Args:
      num_classes: object classes (supplied by the builder from ``model.num_classes``).
      levels, channels: the neck's levels and width (supplied by the builder).
      roi_resolution: RoIAlign output size (14); the masks are twice as fine (28).
      roi_convs: 3×3 convolutions of the FCN on the fused RoI features (4).
      roi_levels: (first, last) pyramid level of eq. 5.1 (P2–P5).
      canonical_size: eq. 5.1's 56.
      roi_sampling_ratio: RoIAlign samples per bin and axis (fixed; mmcv's adaptive
        count is data-dependent).
      max_train_rois: training RoIs per image (capacity, EffSeg's
        :mod:`~msvision.models.heads.roi_mask.rois`).
      mask_loss_weight: weight of the mask loss (1, as released).
      inference: mask threshold, eq. 5.3 score weighting, paste chunk
        (:class:`~msvision.models.heads.roi_mask.RoIMaskPostProcess`, as EffSeg's).
    """

    class_specific = True  # the builder passes num_classes

    def __init__(
        self,
        num_classes: int = 80,
        levels: Sequence[int] = (2, 3, 4, 5, 6, 7),
        channels: int = 256,
        *,
        roi_resolution: int = 14,
        roi_convs: int = 4,
        roi_levels: tuple[int, int] = (2, 5),
        canonical_size: float = 56.0,
        roi_sampling_ratio: int = 2,
        max_train_rois: int = 128,
        mask_loss_weight: float = 1.0,
        inference: RoIMaskPostProcess = RoIMaskPostProcess(),
        dtype=None,
        rngs: nnx.Rngs,
    ):
        first, last = (int(v) for v in roi_levels)
        roi_ops.check_pyramid_levels("Mask R-CNN++", levels, range(first, last + 1))
        self.num_classes = int(num_classes)
        self.channels = channels
        self.roi_resolution = int(roi_resolution)
        self.roi_levels = (first, last)
        self.canonical_size = float(canonical_size)
        self.roi_sampling_ratio = int(roi_sampling_ratio)
        self.max_train_rois = int(max_train_rois)
        self.mask_loss_weight = float(mask_loss_weight)
        self.postprocess = inference
        self.dtype = dtype
        self.query_fusion = QueryFusion(channels, channels, dtype=dtype, rngs=rngs)
        self.mask_head = FCNMaskHead(channels, self.num_classes, roi_convs, dtype=dtype, rngs=rngs)

    @property
    def mask_resolution(self) -> int:
        return 2 * self.roi_resolution

    def __call__(self, pyramid: dict[int, Array], image_sizes: Array, queries: Array, boxes: Array) -> Array:
        """Class-specific mask logits of every RoI.

        Args:
          pyramid: ``{level: [B, H_l, W_l, C]}`` neck maps.
          image_sizes: ``[B, 2]`` int (h, w) of the images inside the padding.
          queries: ``[B, R, C]``; boxes: ``[B, R, 4]`` float ``(x0, y0, x1, y1)``
            padded-input pixels (no gradient flows into them).

        Returns:
          ``[B, R, 28, 28, num_classes]`` float32 logits; cell (i, j) is the i-th row /
          j-th column of the 28 × 28 split of the box.
        """
        dtype = self.dtype or pyramid[self.roi_levels[0]].dtype
        boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
        batch, num_rois = boxes.shape[:2]
        size = self.roi_resolution
        x, _ = multilevel_roi_features(pyramid, boxes, image_sizes, size, self.roi_levels, self.canonical_size,
                                       self.roi_sampling_ratio)  # eq. 5.1
        x = x.astype(dtype).reshape(batch * num_rois, size, size, self.channels)
        x = self.query_fusion(x, queries.reshape(batch * num_rois, -1).astype(dtype))
        logits = self.mask_head(x)
        return logits.reshape(batch, num_rois, 2 * size, 2 * size, self.num_classes)

    def losses(self, pyramid: dict[int, Array], batch: Batch, queries: QueryOutputs,
               rng: Array | None = None) -> tuple[Array, dict]:
        """Mask loss of the matched queries, ``(total, metrics)`` float32."""
        del rng  # no training-time randomness
        rois, train, labels = roi_ops.gather_train_rois(queries, batch, self.max_train_rois, "the Mask R-CNN++ head")
        logits = class_logits.pick_class(self(pyramid, batch.image_sizes, rois.queries, rois.boxes), labels)
        targets = crop_resize_targets(batch, rois.boxes, train.gt_index, self.mask_resolution)
        loss = self.mask_loss_weight * class_logits.per_roi_bce(logits, targets, rois.valid)
        metrics = {"loss_mask": loss, "mask/acc": class_logits.accuracy(logits, targets, rois.valid),
                   **roi_ops.roi_metrics(train)}
        return loss, metrics

    def predict(self, pyramid: dict[int, Array], batch: ImageBatch, dets: Detections,
                queries: QueryOutputs) -> Detections:
        """``dets`` with ``masks [B, K, 28, 28]`` probabilities of each detection's class on
        ``mask_boxes`` (its query's predicted box) and eq. 5.3 scores, re-sorted."""
        rois, inverse = roi_ops.gather_inference_rois(queries, dets)
        logits = self(pyramid, batch.image_sizes, rois.queries, rois.boxes)  # [B, R, 28, 28, NC]
        probs = jax.nn.sigmoid(class_logits.detection_masks(logits, inverse, dets.labels))
        return score_and_sort(batch, dets, probs, roi_ops.per_detection(rois.boxes, inverse), self.postprocess)


__all__ = ["MaskRCNNHead"]
