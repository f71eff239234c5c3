"""RefineMask++ inference: the 112 × 112 mask from the stage logits (released
``RefineMaskRoIHead.get_mask_logits``, DetSeg ``models/heads/seg/mmdet_roi.py``, after
RefineMask's ``SimpleRefineRoIHead.simple_test_mask``), then the paste and eq. 5.3
scores shared by the mask heads (:mod:`msvision.models.heads.roi_mask.postprocess`).

From stage ``first_stage`` (1: 28 × 28; stage 0 only feeds the network) on, every next
stage upsamples the current logits ×2 (bilinear, align corners) and overwrites only the
cells of the upsampled width-``band_width`` (1) boundary band of the current prediction
(:func:`~.boundary.refine_with_band`) with its own logits: 28 → 56 → 112.
"""

from __future__ import annotations

import dataclasses

import jax

from msvision.models.heads.refinemask.boundary import refine_with_band

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RefineMaskPostProcess:
    """Inference settings (config section ``model.seg_head.inference``).

    ``band_width``: the boundary band overwritten at every refinement (1, as released);
    ``first_stage``: the stage whose logits start the refinement (1: the 28² logits);
    ``mask_threshold``, ``score_weighting``, ``paste_chunk``: as
    :class:`~msvision.models.heads.roi_mask.RoIMaskPostProcess` (eq. 5.3 weighting).
    """

    band_width: int = 1
    first_stage: int = 1
    mask_threshold: float = 0.5
    score_weighting: bool = True
    paste_chunk: int = 10


def assemble_mask_logits(stages: list[Array], band_width: int = 1, first_stage: int = 1) -> Array:
    """``stages``: per stage ``[..., S_s, S_s]`` logits (S_s = 14·2^s) → ``[..., S_last, S_last]`` float32."""
    logits = stages[first_stage]
    for current in stages[first_stage + 1:]:
        logits = refine_with_band(logits, current, band_width)
    return logits


__all__ = ["RefineMaskPostProcess", "assemble_mask_logits"]
