"""The EffSeg segmentation head with Structure-Preserving Sparsity (thesis 5.3, figure 5.3).

The released code's version is ``EffSegHead`` (DetSeg ``models/heads/seg/effseg.py``).

Inputs (thesis §5.3.3): the neck pyramid (P2–P5 used), one box per RoI (the detector's
predicted box, no gradient, unclipped, as the released code) and one query feature per RoI.

Stage 0, dense 14×14, F0 = pyramid width (thesis §5.3.3):
  RoIAlign 14×14 from P_k0, k0 = 2 + min(⌊log2(√(wh)/56)⌋, 3) (eq. (5.1)) → + sine
  position encoding of the cells (released code only; ``position_encoding``) → query
  fusion → FCN of ``roi_convs`` 3×3 convolutions with ReLUs → segmentation and
  refinement logits by two 2-layer MLPs.
Stages s = 1..num_stages, sparse (SPS, thesis §5.3.3), F_s = F0 / 2^s:
  the K cells of highest refinement logit of the image become active and split into
  2×2 children (4 child MLPs), the others join the passives (:func:`select_and_split`);
  neck fusion with P_ks sampled at the child's cell centre, ks = max(k0 − s, 2)
  (eq. (5.2)); a shared ``Linear(F, F/2)+ReLU`` transition of actives and passives; the
  processing module (table 5.7; default SFM) on the actives; segmentation and
  refinement logits of the actives.

Fixed capacities (per image, static shapes): R RoIs (training: ``max_train_rois``, see
:mod:`msvision.models.heads.roi_mask.rois`; inference: one per detection slot),
C0 = 196·R stage-0 cells, K = min(``max_selected``, C0) selected per stage (10,000 in the thesis, §5.3.3; all
cells with ``processing='dense_sfm'``), 4K actives, passives P1 = C0 − K,
P_{s+1} = P_s + 3K (:func:`~msvision.ops.sps.sps_capacities`). Nothing overflows at
the cell level: the selection picks the best K valid cells, and when an image has
fewer valid cells the leftover picks are invalid slots (the released code's "refine
everything"), masked out of losses and inference.

Refinement budget per RoI (``selected_per_roi`` = ρ > 0): the thesis's K = 10,000 serves
up to 100 detections at inference, ρ = 100 cells per RoI and stage, and on COCO a similar
share of every training RoI's cells (about 7 objects × up to 15 positives per image). A
model scaled to fewer RoIs per image with a fixed K trains at one density and runs at
another; with ρ set, each image refines ρ · (its number of valid RoIs) cells per stage
(static capacity K = min(``max_selected``, ρ · R)), still ranked over all of the image's
RoIs as in the thesis. The picks beyond an image's budget keep their child slots but are
invalid and behave exactly as passive cells: they carry the transitioned parent feature,
are read as such by the processing module's neighbours, and are not supervised or
written into the mask. ρ may also be given per stage, ``(ρ_1, …, ρ_n)``: the thesis uses
one K for every stage; a stage's cost per cell falls with its width (F_s halves), so a
budget that grows with the stage refines more of a long outline where it is cheap (on the
large synthetic objects ρ = (100, 150, 300) against 100: +0.016 mask AP for 1.18× the
head's MACs; ``benchmarks/RESULTS.md``, "Why PointRend++ leads").

Padding-aware (``msvision/ops/padding.py``): RoIAlign applies its border rules at the
image's valid map and the neck is sampled on maps zeroed outside the image, so an
image's masks do not depend on its batch's padding.

Config (``model.seg_head``, name 'effseg'): the constructor keywords below;
``python -m msvision.models.build --kind seg_head --name effseg`` prints them.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.heads.effseg.criterion import EffSegCriterion
from msvision.models.heads.effseg.modules import ChildNetwork, NeckFusion, ProcessingModule, sine_position_encoding
from msvision.models.heads.effseg.postprocess import assemble_mask_logits
from msvision.models.heads.roi_mask import rois as roi_ops
from msvision.models.heads.roi_mask.features import QueryFusion, multilevel_roi_features
from msvision.models.heads.roi_mask.postprocess import RoIMaskPostProcess, score_and_sort, upsample2x
from msvision.models.heads.roi_mask.targets import mask_targets
from msvision.models.layers import Conv2d, TwoLayerMLP, halving_widths, kaiming_normal_fan_out, torch_linear
from msvision.ops.padding import mask_padding
from msvision.ops.roi_align import multilevel_sample_bilinear
from msvision.ops.sps import SPS, select_and_split, sps_capacities, sps_from_dense
from msvision.structures import Batch, Detections, ImageBatch, QueryOutputs

Array = jax.Array


class EffSegHead(nnx.Module):
    """EffSeg (see the module docstring).

    Args:
      levels: pyramid levels of the neck (``neck.out_levels``); ``roi_levels`` must be among them.
      channels: pyramid width = query width = F0.
      num_stages: sparse refinement stages (3: 14 → 112, thesis §5.3.3).
      roi_resolution: RoIAlign output size, the stage-0 grid (14, thesis §5.3.3).
      min_stage_channels: floor of the halved stage widths F_s = F0 / 2^s (1: the thesis's
        halving; a scaled-down head keeps its finest stages this wide).
      roi_convs: 3×3 convolutions of the stage-0 FCN on the fused RoI features (4, thesis §5.3.3).
      processing: table 5.7's processing module, 'sfm' | 'conv' | 'deform_conv' | 'mlp' |
        'dense_sfm' (:class:`~.modules.ProcessingModule`).
      dilations: SFM dilations (1, 3, 5, thesis §5.3.3).
      position_encoding: add the sine encoding of the cells to the RoI features (released
        code only, ``SinePosEncoder2d``).
      roi_levels: (first, last) pyramid level of the RoIAlign, eq. (5.1) (P2–P5).
      canonical_size: eq. 5.1's 56.
      roi_sampling_ratio: RoIAlign samples per bin and axis (fixed: mmcv's adaptive
        count is data-dependent).
      max_selected: K, cells refined per image and stage (10,000, thesis §5.3.3).
      selected_per_roi: ρ > 0 ties the budget to the RoIs: ρ · (valid RoIs) cells per image
        and stage, at most ``max_selected`` (see the module docstring); 0: K = ``max_selected``.
        A sequence gives ρ per stage (all ≥ 1).
      max_train_rois: training RoIs per image (capacity; :mod:`~msvision.models.heads.roi_mask.rois`).
      inference_stages: a diagnostic: the masks are assembled from stages 0..n only and
        upsampled ×2 per skipped stage to the full resolution (None: every stage).
      sfm_impl: the SFM implementation (``msvision.ops.sps.sfm``).
      loss, inference: :class:`.EffSegCriterion`,
        :class:`~msvision.models.heads.roi_mask.RoIMaskPostProcess` (eq. 5.3 weighting).
    """

    class_specific = False  # one mask per RoI, whatever its class

    def __init__(
        self,
        levels: Sequence[int] = (2, 3, 4, 5, 6, 7),
        channels: int = 256,
        *,
        num_stages: int = 3,
        roi_resolution: int = 14,
        min_stage_channels: int = 1,
        roi_convs: int = 4,
        processing: str = "sfm",
        dilations: tuple[int, ...] = (1, 3, 5),
        position_encoding: bool = True,
        roi_levels: tuple[int, int] = (2, 5),
        canonical_size: float = 56.0,
        roi_sampling_ratio: int = 2,
        max_selected: int = 10_000,
        selected_per_roi: int | Sequence[int] = 0,
        max_train_rois: int = 128,
        inference_stages: int | None = None,
        sfm_impl: str = "auto",
        loss: EffSegCriterion = EffSegCriterion(),
        inference: RoIMaskPostProcess = RoIMaskPostProcess(),
        dtype=None,
        rngs: nnx.Rngs,
    ):
        first, last = (int(v) for v in roi_levels)
        roi_ops.check_pyramid_levels("EffSeg", levels, range(first, last + 1))
        widths = halving_widths(channels, num_stages, min_stage_channels)
        if len(loss.seg_weights) < num_stages + 1:
            raise ValueError(f"{num_stages + 1} stages need as many loss weights, got {loss.seg_weights}")
        self.levels = tuple(sorted(levels))
        self.channels = channels
        self.num_stages = num_stages
        self.roi_resolution = roi_resolution
        self.processing = processing
        self.position_encoding = position_encoding
        self.roi_levels = (first, last)
        self.canonical_size = float(canonical_size)
        self.roi_sampling_ratio = int(roi_sampling_ratio)
        self.max_selected = int(max_selected)
        if isinstance(selected_per_roi, int):
            if selected_per_roi < 0:
                raise ValueError(f"selected_per_roi must be >= 0, got {selected_per_roi}")
            self.selected_per_roi = int(selected_per_roi)
        else:
            rhos = tuple(int(r) for r in selected_per_roi)
            if len(rhos) != num_stages or min(rhos) < 1:
                raise ValueError(f"selected_per_roi per stage needs {num_stages} values >= 1, got {selected_per_roi}")
            self.selected_per_roi = rhos
        self.max_train_rois = int(max_train_rois)
        if inference_stages is not None and not 0 <= inference_stages <= num_stages:
            raise ValueError(f"inference_stages must be in 0..{num_stages}, got {inference_stages}")
        self.inference_stages = inference_stages
        self.criterion = loss
        self.postprocess = inference
        self.dtype = dtype

        kw = dict(dtype=dtype, rngs=rngs)
        f = channels
        self.query_fusion = QueryFusion(f, channels, **kw)
        # The roi_convs convolutions; 'fcn' is their name in the parameter tree (checkpoints).
        self.fcn = nnx.List([
            Conv2d(f, f, 3, kernel_init=kaiming_normal_fan_out(), **kw) for _ in range(roi_convs)
        ])
        self.seg_mlps = nnx.List([TwoLayerMLP(f, f, 1, **kw)])
        self.ref_mlps = nnx.List([TwoLayerMLP(f, f, 1, **kw)])
        self.children_nets = nnx.List()
        self.neck_fusions = nnx.List()
        self.transitions = nnx.List()
        self.processors = nnx.List()
        for s in range(num_stages):
            self.children_nets.append(ChildNetwork(f, **kw))
            self.neck_fusions.append(NeckFusion(f, channels, **kw))
            self.transitions.append(torch_linear(f, widths[s + 1], **kw))
            f = widths[s + 1]
            self.processors.append(ProcessingModule(f, processing, dilations, sfm_impl, **kw))
            self.seg_mlps.append(TwoLayerMLP(f, f, 1, **kw))
            self.ref_mlps.append(TwoLayerMLP(f, f, 1, **kw))

    # --- capacities ------------------------------------------------------------------

    def selected_per_stage(self, num_rois: int) -> tuple[int, ...]:
        """Static K of each stage update for ``num_rois`` RoIs per image."""
        if self.processing == "dense_sfm":  # every cell active (table 5.7's DenseSFM)
            c0 = num_rois * self.roi_resolution ** 2
            return tuple(c0 * 4 ** s for s in range(self.num_stages))
        budgets = tuple(min(self.max_selected, rho * num_rois) if rho else self.max_selected
                        for rho in self._stage_rhos())
        return sps_capacities(num_rois, budgets, self.num_stages, self.roi_resolution).selected

    def _stage_rhos(self) -> tuple[int, ...]:
        """ρ of each stage (0: no per-RoI budget)."""
        if isinstance(self.selected_per_roi, tuple):
            return self.selected_per_roi
        return (self.selected_per_roi,) * self.num_stages

    # --- network ---------------------------------------------------------------------

    def __call__(self, pyramid: dict[int, Array], image_sizes: Array, queries: Array, boxes: Array,
                 roi_valid: Array) -> list[dict]:
        """Every stage's predictions.

        Args:
          pyramid: ``{level: [B, H_l, W_l, C]}`` neck maps.
          image_sizes: ``[B, 2]`` int (h, w) of the images inside the padding.
          queries: ``[B, R, C]`` query feature of each RoI; boxes: ``[B, R, 4]`` float
            ``(x0, y0, x1, y1)`` padded-input pixels (no gradient flows into them).
          roi_valid: ``[B, R]`` bool.

        Returns:
          per stage s = 0..num_stages the supervised / predicted cells: ``seg``, ``ref``
          ``[B, A_s]`` float32 logits, ``valid [B, A_s]`` bool, ``roi [B, A_s]`` int32,
          ``xy [B, A_s, 2]`` int32 (x, y) at resolution 14·2^s; stage 0 lists every
          cell (roi-major, row-major).
        """
        dtype = self.dtype or pyramid[self.roi_levels[0]].dtype
        boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
        image_sizes = jnp.asarray(image_sizes, jnp.int32)
        batch, num_rois = roi_valid.shape
        size = self.roi_resolution
        first, last = self.roi_levels

        # Stage 0 (dense); k0 [B, R] the eq. 5.1 level of every RoI.
        x, k0 = multilevel_roi_features(pyramid, boxes, image_sizes, size, self.roi_levels, self.canonical_size,
                                        self.roi_sampling_ratio)
        x = x.astype(dtype)  # [B, R, 14, 14, F]
        if self.position_encoding:
            x = x + sine_position_encoding(size, self.channels).astype(dtype)
        x = x.reshape(batch * num_rois, size, size, self.channels)
        x = self.query_fusion(x, queries.reshape(batch * num_rois, -1).astype(dtype))
        for conv in self.fcn:
            x = jax.nn.relu(conv(x))
        x = x.reshape(batch, num_rois, size, size, self.channels)
        sps = jax.vmap(sps_from_dense)(x, roi_valid)
        stages = [self._cells(sps, 0)]

        # Stages 1..num_stages (sparse). The neck is read with zeros outside each image.
        neck = {l: mask_padding(pyramid[l], image_sizes, 2 ** l) for l in range(first, last + 1)}
        num_valid = jnp.sum(roi_valid, axis=1).astype(jnp.int32)  # [B]
        for s, (k, rho) in enumerate(zip(self.selected_per_stage(num_rois), self._stage_rhos()), start=1):
            limit = rho * num_valid if rho else None  # ρ cells per valid RoI (module docstring)
            parents_all = sps.act
            sps, selected = jax.vmap(lambda state, ref, cap: select_and_split(state, ref, k, cap))(
                sps, stages[-1]["ref"], limit)
            parents = jnp.take_along_axis(parents_all, selected[..., None], axis=1)  # [B, K, F]
            act = self.children_nets[s - 1](parents)  # [B, 4K, F]
            key = self._neck_features(neck, boxes, k0, sps, s)
            act = self.neck_fusions[s - 1](act, key)
            act = jax.nn.relu(self.transitions[s - 1](act))
            pas = jax.nn.relu(self.transitions[s - 1](sps.pas))
            active = None
            if limit is not None:  # picks over the budget: passive cells (the parent, transitioned)
                active = sps.act_valid
                held = jax.nn.relu(self.transitions[s - 1](jnp.repeat(parents, 4, axis=1)))
                act = jnp.where(active[..., None], act, held)
            act = self.processors[s - 1](act, pas, sps.id_map, sps.act_xy, sps.act_roi, active)
            sps = sps.replace(act=act, pas=pas)
            stages.append(self._cells(sps, s))
        return stages

    def _cells(self, sps: SPS, stage: int) -> dict:
        return dict(seg=self.seg_mlps[stage](sps.act)[..., 0].astype(jnp.float32),
                    ref=self.ref_mlps[stage](sps.act)[..., 0].astype(jnp.float32),
                    valid=sps.act_valid, roi=sps.act_roi, xy=sps.act_xy)

    def _neck_features(self, neck: dict[int, Array], boxes: Array, k0: Array, sps: SPS, stage: int) -> Array:
        """``[B, A, C]`` neck features at the active cells' centres from P_ks, ks = max(k0 − s, 2) (eq. 5.2)."""
        first, last = self.roi_levels
        size = self.roi_resolution * 2 ** stage
        box = jnp.take_along_axis(boxes, sps.act_roi[..., None], axis=1)  # [B, A, 4]
        centre = box[..., :2] + (sps.act_xy.astype(jnp.float32) + 0.5) / size * (box[..., 2:] - box[..., :2])
        level = jnp.maximum(jnp.take_along_axis(k0, sps.act_roi, axis=1) - stage, first)
        # Normalised to each level's stored map: x / (2^k W_k) is the grid_sample
        # coordinate of the pixel position x on a stride-2^k map (the released code
        # normalises by the padded image size; this is exact for inputs that are not
        # multiples of 2^k, see ops.roi_align).
        extent = jnp.asarray([[2 ** l * neck[l].shape[2], 2 ** l * neck[l].shape[1]] for l in range(first, last + 1)],
                             jnp.float32)  # [L, 2] (x, y)
        points = centre / extent[level - first]
        return multilevel_sample_bilinear(neck, points, level).astype(self.dtype or neck[first].dtype)

    # --- training and inference ------------------------------------------------------------

    def losses(self, pyramid: dict[int, Array], batch: Batch, queries: QueryOutputs,
               rng: Array | None = None) -> tuple[Array, dict]:
        """Mask losses of the matched queries (stage-2 positives), ``(total, metrics)`` float32."""
        del rng  # no training-time randomness
        rois, train, _ = roi_ops.gather_train_rois(queries, batch, self.max_train_rois, "the EffSeg head")
        stages = self(pyramid, batch.image_sizes, rois.queries, rois.boxes, rois.valid)
        targets = mask_targets(jnp.asarray(batch.masks), rois.boxes, train.gt_index, self.num_stages,
                               self.roi_resolution, self.criterion.seg_target,
                               image_sizes=jnp.asarray(batch.image_sizes, jnp.int32),
                               mask_boxes=None if batch.mask_boxes is None else jnp.asarray(batch.mask_boxes))
        num_kept = jnp.sum(rois.valid, axis=1)
        metrics = self.criterion(stages, targets, num_kept)
        total = metrics["loss_mask_seg"] + metrics["loss_mask_ref"]
        metrics.update(roi_ops.roi_metrics(train))
        return total, metrics

    def predict(self, pyramid: dict[int, Array], batch: ImageBatch, dets: Detections,
                queries: QueryOutputs) -> Detections:
        """``dets`` with ``masks [B, K, S, S]`` probabilities on ``mask_boxes`` and, with
        ``inference.score_weighting``, scores ``s_cls · mean(p | p > 0.5)`` (eq. 5.3),
        re-sorted. One mask per distinct detected query (as the released code); boxes in
        padded-input pixels."""
        num_dets = dets.valid.shape[1]
        rois, inverse = roi_ops.gather_inference_rois(queries, dets)
        stages = self(pyramid, batch.image_sizes, rois.queries, rois.boxes, rois.valid)
        used = len(stages) if self.inference_stages is None else self.inference_stages + 1
        logits = assemble_mask_logits(stages[:used], num_dets, self.roi_resolution)
        for _ in range(len(stages) - used):
            logits = upsample2x(logits)
        probs = jax.nn.sigmoid(logits)  # [B, R, S, S]
        return score_and_sort(batch, dets, roi_ops.per_detection(probs, inverse),
                              roi_ops.per_detection(rois.boxes, inverse), self.postprocess)


__all__ = ["EffSegHead"]
