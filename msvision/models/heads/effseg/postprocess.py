"""EffSeg inference: the mask logits from the SPS stage predictions (thesis §5.3.3).

The released code's version: ``EffSegHead.get_mask_scores`` (DetSeg ``models/heads/seg/effseg.py``).

:func:`assemble_mask_logits`: the stage-0 14×14 logits; at every next stage a ×2
bilinear upsampling (``align_corners=False``) of the logits, then the active cells
overwritten with their new logits → 112×112 logits per RoI. Pasting, the eq. (5.3)
scores and the inference settings are shared by the mask heads:
:mod:`msvision.models.heads.roi_mask.postprocess`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msvision.models.heads.roi_mask.postprocess import upsample2x

Array = jax.Array


def assemble_mask_logits(stages: list[dict], num_rois: int, roi_resolution: int = 14) -> Array:
    """``[B, R, S, S]`` float32 mask logits, S = roi_resolution·2^(stages-1) (thesis §5.3.3).

    Args:
      stages: the head's cells per stage (``seg [B, A_s]`` logits, ``valid``, ``roi``,
        ``xy [B, A_s, 2]`` (x, y)); stage 0 holds every cell of the 14×14 grids.
    """
    first = stages[0]
    batch = first["seg"].shape[0]
    logits = jnp.zeros((batch, num_rois, roi_resolution, roi_resolution), jnp.float32)
    b = jnp.arange(batch)[:, None]
    for s, cells in enumerate(stages):
        if s > 0:
            logits = upsample2x(logits)
        # Invalid slots (cells of padding RoIs) are sent out of bounds and dropped.
        roi = jnp.where(cells["valid"], cells["roi"], num_rois)
        logits = logits.at[b, roi, cells["xy"][..., 1], cells["xy"][..., 0]].set(
            cells["seg"].astype(jnp.float32), mode="drop")
    return logits


__all__ = ["assemble_mask_logits"]
