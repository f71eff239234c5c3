"""RefineMask++ losses: the boundary-aware refinement (BAR) loss (RefineMask, Zhang et al. 2021;
released ``BARCrossEntropyLoss``, DetSeg ``models/modules/refine_mask.py``).

Stage s = 0..3 predicts class-specific logits at 14, 28, 56 and (class-agnostic) 112.
Sigmoid cross-entropy per stage:

- stages ``s ≤ start_stage`` (0 and 1): every cell of every training RoI;
- stages ``s > start_stage``: only the cells of the region
  ``up(band_w(P_{s−1}) ∪ band_w(T_{s−1}))``: the width-``boundary_width`` bands
  (:func:`~.boundary.boundary_band`, w = 2) of the previous stage's running prediction
  and of the previous stage's target, upsampled to stage s (:func:`~.boundary.upsample_band`).
  The running prediction is what inference would show at stage s − 1: ``P_1 = m_1 ≥ 0``,
  then ``P_s`` = :func:`~.boundary.refine_with_band` of the previous logits with width
  ``refine_width`` (1, "same as inference" in the released code).

Stage weights ``seg_weights`` (0.5, 0.75, 0.75, 1.0, as released; named as EffSeg's
per-stage mask-loss weights). Reduction as the released code with one image per GPU
(``RefineMaskRoIHead.compute_losses``, DetSeg ``models/heads/seg/mmdet_roi.py``: the
loss multiplied by the number of matches), per image: mean over the supervised
cells of the stage × the image's training RoIs; averaged over the batch.

Optional semantic loss (``semantic_weight > 0``; the original ``RefineMaskHead``'s
``RefineCrossEntropyLoss``, not in the released ``SimpleRefineMaskHead`` the thesis uses):
sigmoid cross-entropy of the semantic logits against the image's foreground (the union
of its instance masks) at the semantic map's resolution, mean over the image's valid cells.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from msvision.models.heads.refinemask.boundary import boundary_band, refine_with_band, upsample_band
from msvision.models.heads.roi_mask.targets import SEG_TARGETS
from msvision.ops import losses as loss_ops

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RefineMaskCriterion:
    """Loss settings (config section ``model.seg_head.loss``; module docstring).

    ``seg_target``: 'average' (released code: mmdet ``crop_and_resize``, the RoIAlign
    average of the mask over the cell ≥ 0.5) or 'centre' (the mask at the cell centre),
    :func:`msvision.models.heads.roi_mask.targets.mask_targets`.
    """

    seg_weights: tuple[float, ...] = (0.5, 0.75, 0.75, 1.0)
    boundary_width: int = 2
    start_stage: int = 1
    refine_width: int = 1
    seg_target: str = "average"
    semantic_weight: float = 0.0

    def __post_init__(self):
        if self.seg_target not in SEG_TARGETS:
            raise ValueError(f"loss.seg_target must be one of {SEG_TARGETS}, got {self.seg_target!r}")

    def __call__(self, stages: list[Array], targets: list[Array], roi_valid: Array) -> dict[str, Array]:
        """The BAR loss and per-stage metrics.

        Args:
          stages: per stage s the logits ``[B, R, S_s, S_s]`` float32 (S_s = 14·2^s).
          targets: per stage ``[B, R, S_s, S_s]`` bool ground truth.
          roi_valid: ``[B, R]`` bool training RoIs.

        Returns:
          ``loss_mask`` (scalar, weighted sum over stages), ``mask/loss_s`` (unweighted
          stage losses), ``mask/acc_s`` (accuracy over the supervised cells),
          ``mask/band_cells_s`` (supervised cells per image, the BAR stages).
        """
        if len(stages) != len(self.seg_weights):
            raise ValueError(f"{len(stages)} stages but {len(self.seg_weights)} loss weights")
        num_rois = jnp.sum(roi_valid, axis=1).astype(jnp.float32)  # [B]
        valid = roi_valid[:, :, None, None]
        out = {"loss_mask": 0.0}
        refined = None  # logits of the running prediction (what inference shows at the stage)
        for s, (logits, target) in enumerate(zip(stages, targets)):
            logits = logits.astype(jnp.float32)
            if s <= self.start_stage:
                region = jnp.broadcast_to(valid, logits.shape)
                refined = logits
            else:
                band = (boundary_band(refined >= 0, self.boundary_width)
                        | boundary_band(targets[s - 1], self.boundary_width))
                region = upsample_band(band) & valid
                out[f"mask/band_cells_{s}"] = jnp.mean(jnp.sum(region, axis=(1, 2, 3)).astype(jnp.float32))
                # The released code fills the cells outside the width-1 band from the previous
                # stage's raw logits, inference from its refined ones; they differ only from the
                # last stage on, whose running prediction is never used.
                refined = refine_with_band(refined, logits, self.refine_width)
            bce = jnp.where(region, loss_ops.sigmoid_bce_loss(logits, target.astype(jnp.float32)), 0.0)
            count = jnp.maximum(jnp.sum(region, axis=(1, 2, 3)), 1).astype(jnp.float32)
            per_image = jnp.sum(bce, axis=(1, 2, 3)) / count * num_rois
            stage_loss = jnp.mean(per_image)
            out["loss_mask"] = out["loss_mask"] + self.seg_weights[s] * stage_loss
            out[f"mask/loss_{s}"] = stage_loss
            correct = region & ((logits >= 0) == target)
            out[f"mask/acc_{s}"] = jnp.sum(correct) / jnp.maximum(jnp.sum(region), 1)
        return out
        return out


def semantic_loss(logits: Array, target: Array, valid: Array) -> Array:
    """Sigmoid cross-entropy of ``logits [B, H, W]`` against ``target [B, H, W]`` bool, mean over
    each image's ``valid [B, H, W]`` cells, averaged over the batch (scalar float32)."""
    bce = jnp.where(valid, loss_ops.sigmoid_bce_loss(logits.astype(jnp.float32), target.astype(jnp.float32)), 0.0)
    count = jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1).astype(jnp.float32)
    return jnp.mean(jnp.sum(bce, axis=(1, 2)) / count)


__all__ = ["RefineMaskCriterion", "semantic_loss"]
