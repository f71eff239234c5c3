"""Analytic multiply-accumulate count of the EffSeg head over the VALID cells (thesis §2.3).

XLA's cost analysis counts buffer capacities (every RoI slot, every active slot, valid
or not); the thesis's FLOPs (fvcore with the released code's handles, DetSeg
``utils/flops.py``) count the real work: linear layers ``in·out`` per row, 3×3
convolutions and IdConvs ``9·in·out`` per output cell, RoIAlign ``4·sr²·numel(out)``,
bilinear neck sampling ``4·C`` per point. Elementwise operations are not counted (as fvcore does not).

:func:`stage_counts` reads the valid counts from the head's outputs;
:func:`effseg_macs` turns them into MACs per component.
"""

from __future__ import annotations

import numpy as np

from msvision.models.layers import halving_widths
from msvision.ops.roi_align import roi_align_macs


def stage_counts(stages: list[dict], image: int = 0) -> dict:
    """Valid RoIs and valid actives per stage of one image of the head's outputs."""
    actives = [int(np.asarray(s["valid"])[image].sum()) for s in stages]
    rois = actives[0] // 196 if actives else 0
    return dict(rois=rois, actives=actives)


def effseg_macs(channels: int, num_rois: int, actives: list[int], roi_resolution: int = 14, roi_convs: int = 4,
                processing: str = "sfm", num_dilations: int = 3, roi_sampling_ratio: int = 2,
                min_stage_channels: int = 1) -> dict[str, int]:
    """MACs of one image by component.

    Args:
      channels: F0 (= pyramid width C).
      num_rois: valid RoIs R.
      actives: valid actives per stage ``[R·roi_resolution², A_1, A_2, A_3]``; the passives and
        parents follow from them (P_1 = C0 − K, P_{s+1} = P_s + A_s − K; K = A_s / 4).
      processing: the processing module (its core's cost differs).
      min_stage_channels: the head's width floor (:func:`~msvision.models.layers.halving_widths`).
    """
    c = f = channels
    widths = halving_widths(channels, len(actives) - 1, min_stage_channels)
    cells = num_rois * roi_resolution ** 2
    out = {
        "roi_align": roi_align_macs(num_rois, roi_resolution, c, roi_sampling_ratio),
        "query_fusion": num_rois * c * c + cells * (2 * f * f + f * f),
        "fcn": cells * roi_convs * 9 * f * f,
        "logits": cells * 2 * (f * f + f),
    }
    passives = 0
    previous = actives[0]
    for s, active in enumerate(actives[1:], start=1):
        parents = active // 4
        passives += previous - parents
        half = widths[s]
        out["children"] = out.get("children", 0) + parents * (f * 4 * f + 4 * f * f)
        out["neck_fusion"] = out.get("neck_fusion", 0) + active * ((f + c) * f + f * f + 4 * c)
        out["transition"] = out.get("transition", 0) + (active + passives) * f * half
        pointwise = 3 * half * half  # the module's three Linear layers
        if processing in ("sfm", "dense_sfm"):
            core = num_dilations * 9 * half * half
        elif processing == "conv":
            core = 9 * half * half
        elif processing == "deform_conv":
            core = 9 * half * half + 9 * half * 18 + 9 * 4 * half  # conv, offset conv, bilinear taps
        else:  # mlp
            core = 8 * half * half
        out["processing"] = out.get("processing", 0) + active * (pointwise + core)
        out["logits"] += active * 2 * (half * half + half)
        f = half
        previous = active
    out["total"] = sum(out.values())
    return out


__all__ = ["stage_counts", "effseg_macs"]
