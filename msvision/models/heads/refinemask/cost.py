"""Analytic multiply-accumulate count of the RefineMask++ head for one image (thesis §2.3;
counted as the author's fvcore handles, DetSeg ``utils/flops.py``).

As :mod:`msvision.models.heads.effseg.cost` counts EffSeg (fvcore with the released
code's handles): linear layers and 1×1 convolutions ``in·out`` per cell, 3×3
convolutions ``9·in·out`` per output cell, RoIAlign ``4·sr²·numel(out)``, bilinear
sampling ``4·C`` per point, bilinear upsampling 4 per output element; elementwise
operations (ReLU, sigmoid, the global average) are not counted. The head is dense, so
the count depends only on the RoIs and the valid cells of the semantic map.
"""

from __future__ import annotations

from msvision.models.layers import halving_widths
from msvision.ops.roi_align import roi_align_macs


def refinemask_macs(channels: int, num_rois: int, semantic_cells: int, *, num_stages: int = 3,
                    roi_resolution: int = 14, roi_convs: int = 2, semantic_convs: int = 4,
                    num_dilations: int = 3, roi_sampling_ratio: int = 2,
                    min_stage_channels: int = 1) -> dict[str, int]:
    """MACs of one image by component.

    Args:
      channels: C = F0 (the pyramid width).
      num_rois: R valid RoIs.
      semantic_cells: valid cells of the semantic map (P2: ⌈h/4⌉·⌈w/4⌉).
    """
    c, r = channels, num_rois
    widths = halving_widths(channels, num_stages, min_stage_channels)
    cells0 = r * roi_resolution ** 2
    out = {
        "roi_align": roi_align_macs(r, roi_resolution, c, roi_sampling_ratio),
        "query_fusion": r * c * c + cells0 * (2 * c * c + c * c),
        "instance_convs": cells0 * roi_convs * 9 * c * c,
        "semantic_convs": semantic_cells * semantic_convs * 9 * c * c,
        "semantic_in": 0, "semantic_sampling": 0, "fusion": 0, "logits": 0, "upsampling": 0,
    }
    f, size = c, roi_resolution
    for s in range(num_stages):
        cells = r * size * size
        out["semantic_in"] += semantic_cells * c * f
        out["semantic_sampling"] += cells * 4 * f
        out["fusion"] += cells * ((2 * f + 1) * f + num_dilations * 9 * f * f + f * f + f * (widths[s + 1] - 1))
        out["logits"] += cells * f  # one class per RoI
        if s < num_stages - 1:
            size *= 2
            out["upsampling"] += r * size * size * widths[s + 1] * 4
        f = widths[s + 1]
    out["logits"] += r * size * size * f
    out["upsampling"] += r * (2 * size) ** 2 * 4  # the last logits to 112²
    out["total"] = sum(out.values())
    return out


__all__ = ["refinemask_macs"]
