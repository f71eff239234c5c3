"""Analytic multiply-accumulate counts of the ++ baseline heads at inference (thesis §2.3).

Counted as the thesis's fvcore counter with the released code's handles (DetSeg
``utils/flops.py``): linear
layers ``in·out`` per row, convolutions ``k²·in·out`` per output cell, the 2×2
deconvolution ``4·in·out`` per input cell, RoIAlign ``4·sr²·numel(out)``, a bilinear
point sample ``4·C`` per point; elementwise operations (ReLU, sigmoid, bilinear mask
upsampling) are not counted. XLA's cost analysis counts every buffer slot, valid or not;
these functions count the ``num_rois`` real RoIs and ``num_dets`` detections.

Inference runs the class-agnostic trunk once per distinct detected query
(``num_rois``) and PointRend's subdivision once per detection (``num_dets``; the released
code, like mmdet, refines every detection).
"""

from __future__ import annotations

from msvision.ops.roi_align import roi_align_macs


def fcn_macs(channels: int, num_classes: int, num_rois: int, roi_resolution: int = 14, roi_convs: int = 4) -> dict:
    """Query fusion, FCN, deconvolution and class logits of ``num_rois`` RoIs."""
    c = channels
    cells = num_rois * roi_resolution ** 2
    return {
        "query_fusion": num_rois * c * c + cells * (2 * c * c + c * c),
        "fcn": cells * roi_convs * 9 * c * c,
        "deconv": cells * 4 * c * c,
        "logits": 4 * cells * c * num_classes,
    }


def maskrcnn_macs(channels: int = 256, num_classes: int = 80, num_rois: int = 100, roi_resolution: int = 14,
                  roi_convs: int = 4, roi_sampling_ratio: int = 2) -> dict[str, int]:
    """Mask R-CNN++ MACs by component (and ``total``)."""
    out = {"roi_align": roi_align_macs(num_rois, roi_resolution, channels, roi_sampling_ratio),
           **fcn_macs(channels, num_classes, num_rois, roi_resolution, roi_convs)}
    out["total"] = sum(out.values())
    return out


def point_head_macs(channels: int, num_classes: int, hidden: int = 256, num_fcs: int = 3) -> int:
    """MACs of the point head per point."""
    width, macs = channels, 0
    for _ in range(num_fcs):
        macs += (width + num_classes) * hidden
        width = hidden
    return macs + (width + num_classes) * num_classes


def pointrend_macs(channels: int = 256, num_classes: int = 80, num_rois: int = 100, num_dets: int | None = None,
                   roi_resolution: int = 14, roi_convs: int = 4, point_hidden: int = 256, point_fcs: int = 3,
                   subdivision_steps: int = 2, subdivision_points: int = 784) -> dict[str, int]:
    """PointRend++ MACs by component (and ``total``); ``num_dets`` defaults to ``num_rois``."""
    num_dets = num_rois if num_dets is None else num_dets
    out = {"point_roi_features": num_rois * roi_resolution ** 2 * 4 * channels,
           **fcn_macs(channels, num_classes, num_rois, roi_resolution, roi_convs)}
    size, points = 2 * roi_resolution, 0
    for _ in range(subdivision_steps):
        size *= 2
        points += num_dets * min(subdivision_points, size * size)
    out["point_sampling"] = points * 4 * (channels + num_classes)  # fine features + coarse logits
    out["point_head"] = points * point_head_macs(channels, num_classes, point_hidden, point_fcs)
    out["total"] = sum(out.values())
    return out


__all__ = ["fcn_macs", "maskrcnn_macs", "point_head_macs", "pointrend_macs"]
