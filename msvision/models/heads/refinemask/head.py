"""The RefineMask++ segmentation head, the thesis's main chapter-5 baseline (thesis §5.4.1).

RefineMask (Zhang et al. 2021) in its latest official version (thesis §5.4.1; the released
``SimpleRefineMaskHead``, DetSeg ``models/modules/refine_mask.py``) with EffSeg's query
fusion (no position encoding) and eq. 5.3 score weighting ("++", thesis §5.4.1). Dense:
every cell of every RoI is computed.

Inputs (as EffSeg's): the neck pyramid, one box per RoI (the detector's predicted box, no
gradient, unclipped), its query feature and a class label (training: the matched
object's class; inference: the detection's class): the early masks are class-specific.

1. Instance trunk: RoIAlign 14 × 14 from P_k0 (eq. 5.1, P2–P5) → query fusion
   (thesis §5.3.3, EffSeg's, :class:`~msvision.models.heads.roi_mask.QueryFusion`) →
   ``roi_convs`` (2) 3×3 convolutions with ReLUs, F0 = 256.
2. Semantic branch: ``semantic_convs`` (4) 3×3 convolutions with ReLUs on the whole
   ``semantic_level`` map (P2, stride 4).
3. Stages s = 0, 1, 2 at S = 14, 28, 56 with F = 256, 128, 64 (:class:`~.modules.SFMStage`):
   class-specific logits ``m_s = 1×1_{F→classes}(x)[label]``; the stage's own
   ``ReLU(1×1_{C→F})`` of the semantic map sampled bilinearly at the RoI's S × S cell
   centres (mmcv ``SimpleRoIAlign``); fusion of ``[x, semantic, σ(m_s)]`` to F/2 channels;
   ×2 bilinear upsampling (align_corners=False) after stages 0 and 1.
4. Class-agnostic last logits ``1×1_{32→1}`` at 56 × 56, upsampled ×2 (align corners) to 112.

Stage logits: 14², 28², 56² (class-specific) and 112² (class-agnostic). Losses:
:mod:`.criterion` (BAR); inference: :mod:`.postprocess` (width-1 band overwrite from 28²).
With the thesis config (C = 256, 80 classes, P2) the head has 6,580,590 parameters
(thesis table 5.4: 6.6 M; the released head exactly).

Static shapes: R training RoIs per image (``max_train_rois``, EffSeg's
:func:`~msvision.models.heads.roi_mask.rois.select_train_rois`, overflow counted), one
RoI per detection slot at inference (masks are class-specific: one per distinct
(query, class) pair, EffSeg's unique-query buffer on the pair).

Padding-aware: RoIAlign applies its border rules at the image's valid map, the semantic
convolutions see zeros outside the image and the sampled semantic maps are zeroed there.

Config (``model.seg_head``, name 'refinemask'): the constructor keywords below.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.heads.refinemask.boundary import upsample2x_corners
from msvision.models.heads.refinemask.criterion import RefineMaskCriterion, semantic_loss
from msvision.models.heads.refinemask.modules import ClassLogits, SFMStage, conv1x1, conv3x3
from msvision.models.heads.refinemask.postprocess import RefineMaskPostProcess, assemble_mask_logits
from msvision.models.heads.roi_mask import rois as roi_ops
from msvision.models.heads.roi_mask.features import QueryFusion, multilevel_roi_features
from msvision.models.heads.roi_mask.postprocess import paste_masks, score_and_sort
from msvision.models.heads.roi_mask.targets import mask_targets
from msvision.models.layers import halving_widths
from msvision.ops.padding import mask_padding, padding_mask, resize_bilinear
from msvision.ops.roi_align import sample_bilinear
from msvision.structures import Batch, Detections, ImageBatch, QueryOutputs

Array = jax.Array


class RefineMaskHead(nnx.Module):
    """RefineMask++ (see the module docstring).

    Args:
      levels: pyramid levels of the neck; ``roi_levels`` and ``semantic_level`` must be among them.
      channels: pyramid width = query width = F0.
      num_classes: classes of the class-specific logits (supplied by the builder).
      num_stages: SFM stages (3: 14 → 28 → 56, then the last logits upsampled to 112).
      roi_resolution: RoIAlign output size, the first stage's grid (14).
      min_stage_channels: floor of the halved stage widths (1: the thesis's halving, as
        :class:`~msvision.models.heads.effseg.EffSegHead`'s).
      roi_convs, semantic_convs: 3×3 convolutions of the instance trunk on the fused RoI
        features (2) and of the semantic branch (4) (as released).
      semantic_level: pyramid level the semantic branch reads (2: P2, stride 4, as released).
      dilations: MultiBranchFusionAvg dilations (1, 3, 5).
      class_agnostic_last: the last logits are class-agnostic (RefineMask's
        ``stage_num_classes = [80, 80, 80, 1]``).
      roi_levels, canonical_size, roi_sampling_ratio: the RoIAlign as EffSeg's (eq. 5.1, P2–P5).
      max_train_rois: training RoIs per image (capacity; :mod:`~msvision.models.heads.roi_mask.rois`).
      loss, inference: :class:`.RefineMaskCriterion`, :class:`.RefineMaskPostProcess`.
        ``loss.semantic_weight > 0`` adds a semantic logit (1×1, C → 1) and its loss.
    """

    class_specific = True  # the builder passes num_classes

    def __init__(
        self,
        levels: Sequence[int] = (2, 3, 4, 5, 6, 7),
        channels: int = 256,
        num_classes: int = 80,
        *,
        num_stages: int = 3,
        roi_resolution: int = 14,
        min_stage_channels: int = 1,
        roi_convs: int = 2,
        semantic_convs: int = 4,
        semantic_level: int = 2,
        dilations: tuple[int, ...] = (1, 3, 5),
        class_agnostic_last: bool = True,
        roi_levels: tuple[int, int] = (2, 5),
        canonical_size: float = 56.0,
        roi_sampling_ratio: int = 2,
        max_train_rois: int = 128,
        loss: RefineMaskCriterion = RefineMaskCriterion(),
        inference: RefineMaskPostProcess = RefineMaskPostProcess(),
        dtype=None,
        rngs: nnx.Rngs,
    ):
        first, last = (int(v) for v in roi_levels)
        needed = sorted(set(range(first, last + 1)) | {int(semantic_level)})
        roi_ops.check_pyramid_levels("RefineMask++", levels, needed)
        widths = halving_widths(channels, num_stages, min_stage_channels)
        if widths[-1] < 2:  # the stages output F/2 − 1 features and the probability
            raise ValueError(f"{channels} channels cannot be halved {num_stages} times")
        if len(loss.seg_weights) != num_stages + 1:
            raise ValueError(f"{num_stages + 1} stages need as many loss weights, got {loss.seg_weights}")
        self.levels = tuple(sorted(levels))
        self.channels = channels
        self.num_classes = int(num_classes)
        self.num_stages = num_stages
        self.roi_resolution = roi_resolution
        self.semantic_level = int(semantic_level)
        self.roi_levels = (first, last)
        self.canonical_size = float(canonical_size)
        self.roi_sampling_ratio = int(roi_sampling_ratio)
        self.max_train_rois = int(max_train_rois)
        self.criterion = loss
        self.postprocess = inference
        self.dtype = dtype

        kw = dict(dtype=dtype, rngs=rngs)
        f = channels
        self.query_fusion = QueryFusion(f, channels, **kw)
        # The roi_convs convolutions; 'instance_convs' is their name in the parameter tree (checkpoints).
        self.instance_convs = nnx.List([conv3x3(f, f, **kw) for _ in range(roi_convs)])
        self.semantic_convs = nnx.List([conv3x3(channels, channels, **kw) for _ in range(semantic_convs)])
        self.stages = nnx.List()
        self.stage_logits = nnx.List()
        for s in range(num_stages):
            self.stage_logits.append(ClassLogits(f, self.num_classes, **kw))
            self.stages.append(SFMStage(f, channels, tuple(dilations), out_features=widths[s + 1], **kw))
            f = widths[s + 1]
        self.stage_logits.append(ClassLogits(f, 1 if class_agnostic_last else self.num_classes, **kw))
        self.semantic_logits = conv1x1(channels, 1, **kw) if loss.semantic_weight > 0 else None

    # --- network ---------------------------------------------------------------------

    def __call__(self, pyramid: dict[int, Array], image_sizes: Array, queries: Array, boxes: Array, labels: Array,
                 roi_valid: Array) -> tuple[list[Array], Array | None]:
        """Every stage's logits.

        Args:
          pyramid: ``{level: [B, H_l, W_l, C]}`` neck maps.
          image_sizes: ``[B, 2]`` int (h, w) of the images inside the padding.
          queries: ``[B, R, C]`` query feature of each RoI; boxes: ``[B, R, 4]`` float
            ``(x0, y0, x1, y1)`` padded-input pixels (no gradient flows into them).
          labels: ``[B, R]`` int32 class of each RoI; roi_valid: ``[B, R]`` bool.

        Returns:
          ``stages``: per stage s = 0..num_stages ``[B, R, S_s, S_s]`` float32 logits,
          S_s = roi_resolution·2^s (the last one upsampled from roi_resolution·2^(s−1)); ``semantic``:
          ``[B, H, W]`` float32 semantic logits of the ``semantic_level`` map, or None.
        """
        dtype = self.dtype or pyramid[self.roi_levels[0]].dtype
        boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
        image_sizes = jnp.asarray(image_sizes, jnp.int32)
        batch, num_rois = roi_valid.shape
        size = self.roi_resolution
        x, _ = multilevel_roi_features(pyramid, boxes, image_sizes, size, self.roi_levels, self.canonical_size,
                                       self.roi_sampling_ratio)  # eq. 5.1
        x = x.astype(dtype).reshape(batch * num_rois, size, size, self.channels)
        x = self.query_fusion(x, queries.reshape(batch * num_rois, -1).astype(dtype))
        for conv in self.instance_convs:
            x = jax.nn.relu(conv(x))

        stride = 2 ** self.semantic_level
        semantic = pyramid[self.semantic_level].astype(dtype)
        valid_cells = padding_mask(image_sizes, semantic.shape[1:3], stride)
        for conv in self.semantic_convs:
            semantic = jax.nn.relu(conv(semantic, valid_cells))

        flat_labels = jnp.where(roi_valid, labels, 0).reshape(-1).astype(jnp.int32)
        stages = []
        for s, stage in enumerate(self.stages):
            logits = self.stage_logits[s](x, flat_labels)  # [B·R, S, S]
            stages.append(logits)
            sem_map = mask_padding(stage.semantic_map(semantic), image_sizes, stride)
            x = stage(x, self._sample_rois(sem_map, boxes, size, stride), logits)
            if s < self.num_stages - 1:
                size *= 2
                x = resize_bilinear(x, (size, size))  # nn.Upsample(scale_factor=2, bilinear)
        last_labels = jnp.zeros_like(flat_labels) if self.stage_logits[-1].num_classes == 1 else flat_labels
        stages.append(upsample2x_corners(self.stage_logits[-1](x, last_labels)))
        stages = [m.reshape(batch, num_rois, *m.shape[1:]) for m in stages]
        sem_logits = None
        if self.semantic_logits is not None:
            sem_logits = self.semantic_logits(semantic)[..., 0].astype(jnp.float32)
        return stages, sem_logits

    def _sample_rois(self, features: Array, boxes: Array, size: int, stride: int) -> Array:
        """``features [B, H, W, F]`` read bilinearly at the ``size × size`` cell centres of every
        RoI (mmcv ``SimpleRoIAlign``: ``grid_sample``, zeros outside the map) → ``[B·R, size, size, F]``."""
        batch, num_rois = boxes.shape[:2]
        centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
        ys, xs = jnp.meshgrid(centres, centres, indexing="ij")
        rel = jnp.stack([xs, ys], axis=-1).reshape(-1, 2)  # [S², 2] (x, y), row-major cells
        points = boxes[:, :, None, :2] + rel[None, None] * (boxes[:, :, None, 2:] - boxes[:, :, None, :2])
        # Normalised by the padded map in pixels (stride·W), as grid_sample of the stored map.
        extent = jnp.asarray([stride * features.shape[2], stride * features.shape[1]], jnp.float32)
        out = sample_bilinear(features, (points / extent).reshape(batch, -1, 2))
        return out.reshape(batch * num_rois, size, size, -1).astype(features.dtype)

    # --- training and inference ------------------------------------------------------------

    def losses(self, pyramid: dict[int, Array], batch: Batch, queries: QueryOutputs,
               rng: Array | None = None) -> tuple[Array, dict]:
        """Mask losses of the matched queries (as EffSeg's), ``(total, metrics)`` float32."""
        del rng  # no training-time randomness
        rois, train, labels = roi_ops.gather_train_rois(queries, batch, self.max_train_rois, "the RefineMask++ head")
        stages, sem_logits = self(pyramid, batch.image_sizes, rois.queries, rois.boxes, labels, rois.valid)
        image_sizes = jnp.asarray(batch.image_sizes, jnp.int32)
        mask_boxes = None if batch.mask_boxes is None else jnp.asarray(batch.mask_boxes)
        targets = mask_targets(jnp.asarray(batch.masks), rois.boxes, train.gt_index, self.num_stages,
                               self.roi_resolution, self.criterion.seg_target, image_sizes=image_sizes,
                               mask_boxes=mask_boxes)
        metrics = self.criterion(stages, [seg for seg, _ in targets], rois.valid)
        total = metrics["loss_mask"]
        if sem_logits is not None:
            stride = 2 ** self.semantic_level
            target = foreground_target(jnp.asarray(batch.masks), jnp.asarray(batch.valid), sem_logits.shape[1:],
                                       stride, mask_boxes)
            valid = padding_mask(image_sizes, sem_logits.shape[1:], stride)[..., 0]
            metrics["loss_mask_semantic"] = self.criterion.semantic_weight * semantic_loss(sem_logits, target, valid)
            total = total + metrics["loss_mask_semantic"]
        metrics.update(roi_ops.roi_metrics(train))
        return total, metrics

    def mask_probabilities(self, pyramid: dict[int, Array], image_sizes: Array, queries: Array, boxes: Array,
                           labels: Array, roi_valid: Array) -> Array:
        """``[B, R, 112, 112]`` float32 mask probabilities of the RoIs (:mod:`.postprocess`)."""
        stages, _ = self(pyramid, image_sizes, queries, boxes, labels, roi_valid)
        p = self.postprocess
        return jax.nn.sigmoid(assemble_mask_logits(stages, p.band_width, p.first_stage))

    def predict(self, pyramid: dict[int, Array], batch: ImageBatch, dets: Detections,
                queries: QueryOutputs) -> Detections:
        """``dets`` with ``masks [B, K, 112, 112]`` probabilities on ``mask_boxes`` and, with
        ``inference.score_weighting``, scores ``s_cls · mean(p | p > 0.5)`` (eq. 5.3), re-sorted.
        One mask per distinct detected (query, class) pair; boxes in padded-input pixels."""
        rois, labels, inverse = roi_ops.gather_class_inference_rois(queries, dets, self.num_classes)
        probs = self.mask_probabilities(pyramid, batch.image_sizes, rois.queries, rois.boxes, labels, rois.valid)
        return score_and_sort(batch, dets, roi_ops.per_detection(probs, inverse),
                              roi_ops.per_detection(rois.boxes, inverse), self.postprocess)


def foreground_target(masks: Array, valid: Array, shape_hw: tuple[int, int], stride: int,
                      mask_boxes: Array | None = None) -> Array:
    """``[B, H, W]`` bool: the union of an image's instance masks on a stride-``stride`` map
    (RefineMask's semantic target: the full-image union resized bilinearly, align_corners=False,
    to the map, ≥ 0.5).

    Args:
      masks: ``[B, M, Hm, Wm]`` bool full-image masks, or with ``mask_boxes`` ``[B, M, S, S]``
        uint8 box-frame coverage (0..255), pasted at the map's cell centres.
      valid: ``[B, M]`` bool ground-truth slots.
      shape_hw: static (H, W) of the map.
    """
    height, width = int(shape_hw[0]), int(shape_hw[1])
    if mask_boxes is None:
        union = jnp.any(masks.astype(bool) & valid[:, :, None, None], axis=1).astype(jnp.float32)
        return resize_bilinear(union[..., None], (height, width))[..., 0] >= 0.5

    def one(grids, frames, ok):  # [M, S, S], [M, 4], [M]
        pasted = paste_masks(grids.astype(jnp.float32) / 255.0, frames.astype(jnp.float32) / stride, height, width)
        return jnp.max(jnp.where(ok[:, None, None], pasted, 0.0), axis=0) >= 0.5

    return jax.vmap(one)(masks, mask_boxes, valid)


__all__ = ["RefineMaskHead", "foreground_target"]
