"""EffSeg losses (thesis §5.3.3; released code: ``EffSegHead.compute_losses``,
DetSeg ``models/heads/seg/effseg.py``).

Per stage s, sigmoid cross-entropy of the segmentation and refinement logits of the
cells supervised at that stage: every cell of every RoI at stage 0 (R·196), the
active cells at stages 1–3. Weights (thesis §5.3.3): segmentation (0.25, 0.375, 0.375, 0.5),
refinement (0.25, 0.25, 0.25, 0.25).

Reduction (the released code's ``CrossEntropyLoss`` mean × ``num_matches``): per
image, the mean over its supervised cells times its number of training RoIs; the
per-image values are averaged over the batch (what DDP's gradient average gives at
one image per GPU, thesis §5.4.1). Summed over stages into ``loss_mask_seg`` and
``loss_mask_ref``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from msvision.models.heads.roi_mask.targets import SEG_TARGETS
from msvision.ops import losses as loss_ops

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EffSegCriterion:
    """Loss settings (config section ``model.seg_head.loss``; module docstring).

    ``seg_target``: 'centre' (thesis §5.3.3: the ground truth at the cell centre) or
    'average' (released code: RoIAlign average > 0.5); see
    :mod:`msvision.models.heads.roi_mask.targets`.
    """

    seg_weights: tuple[float, ...] = (0.25, 0.375, 0.375, 0.5)
    ref_weights: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
    seg_target: str = "centre"

    def __post_init__(self):
        if self.seg_target not in SEG_TARGETS:
            raise ValueError(f"loss.seg_target must be one of {SEG_TARGETS}, got {self.seg_target!r}")
        if len(self.seg_weights) != len(self.ref_weights):
            raise ValueError(f"{len(self.seg_weights)} segmentation weights but {len(self.ref_weights)} "
                             "refinement weights")

    def __call__(self, stages: list[dict], targets: list[tuple[Array, Array]], num_rois: Array) -> dict[str, Array]:
        """The losses and per-stage metrics.

        Args:
          stages: per stage the head's cells: ``seg``, ``ref`` ``[B, A_s]`` float logits,
            ``valid [B, A_s]`` bool, ``roi [B, A_s]`` int32, ``xy [B, A_s, 2]`` int32 (x, y).
          targets: per stage ``(seg, refine)`` ``[B, R, S, S]`` bool
            (:func:`~msvision.models.heads.roi_mask.targets.mask_targets`).
          num_rois: ``[B]`` training RoIs per image (the loss scale, the released code's ``num_matches``).

        Returns:
          ``loss_mask_seg``, ``loss_mask_ref`` (scalars) and ``mask/seg_acc_s``,
          ``mask/ref_acc_s`` (accuracy over the supervised cells of stage s).
        """
        if len(stages) > len(self.seg_weights):
            raise ValueError(f"{len(stages)} stages but {len(self.seg_weights)} loss weights")
        out = {"loss_mask_seg": 0.0, "loss_mask_ref": 0.0}
        scale = num_rois.astype(jnp.float32)
        for s, (cells, (seg_t, ref_t)) in enumerate(zip(stages, targets)):
            seg_target = gather_cells(seg_t, cells["roi"], cells["xy"])
            ref_target = gather_cells(ref_t, cells["roi"], cells["xy"])
            valid = cells["valid"]
            count = jnp.maximum(jnp.sum(valid, axis=1), 1).astype(jnp.float32)
            for name, logits, target, weight in (("seg", cells["seg"], seg_target, self.seg_weights[s]),
                                                 ("ref", cells["ref"], ref_target, self.ref_weights[s])):
                logits = logits.astype(jnp.float32)
                bce = jnp.where(valid, loss_ops.sigmoid_bce_loss(logits, target.astype(jnp.float32)), 0.0)
                per_image = jnp.sum(bce, axis=1) / count * scale
                out[f"loss_mask_{name}"] = out[f"loss_mask_{name}"] + weight * jnp.mean(per_image)
                correct = jnp.where(valid, (logits > 0) == target, False)
                out[f"mask/{name}_acc_{s}"] = jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1)
        return out


def gather_cells(dense: Array, roi: Array, xy: Array) -> Array:
    """``dense [B, R, S, S]`` read at the cells ``(roi [B, A], xy [B, A, 2] (x, y))`` → ``[B, A]``."""
    b = jnp.arange(dense.shape[0])[:, None]
    return dense[b, roi, xy[..., 1], xy[..., 0]]


__all__ = ["EffSegCriterion", "gather_cells"]
