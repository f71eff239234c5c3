"""Mask boundaries for Boundary IoU (thesis section 2.3, figure 2.6; Cheng et al. 2021).

The boundary of a binary mask ``G`` is ``G_d ∩ G``: the mask pixels within
Chebyshev distance ``d`` of a pixel outside the mask, the image border counting as
outside. This is the boundary-iou-api definition: ``mask − erode₃ₓ₃^d(pad₁(mask))``,
``d`` iterations of a 3×3 erosion of the mask padded with one row/column of zeros,
with ``d = max(1, round(dilation_ratio · image diagonal))`` (``dilation_ratio`` 0.02
for AP^B*, thesis §2.3).

``d`` iterations of a 3×3 erosion equal one erosion by a ``(2d+1)×(2d+1)`` square,
which is separable into a row pass and a column pass; each pass is a sliding-window
AND computed with ``log₂(2d+1)`` shifted ANDs (window doubling). Only the mask's
bounding box is processed: outside it the mask and its boundary are empty, and
zero-padding the crop is exact because everything outside the box is zero too.

Boundary IoU between a prediction ``P`` and a ground truth ``G`` is
``|P_b ∩ G_b| / |P_b ∪ G_b|``; the AP^B* rule (:func:`boundary_mask_iou`) takes
``min(mask IoU, boundary IoU)`` for non-crowd ground truth.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DILATION_RATIO = 0.02  # 2% of the image diagonal (thesis §2.3)


def boundary_dilation(height: int, width: int, dilation_ratio: float = DILATION_RATIO) -> int:
    """Boundary width ``d = max(1, round(dilation_ratio · sqrt(H² + W²)))`` in pixels.

    Python's ``round`` (half to even) as in boundary-iou-api; e.g. 640×480 → 16.
    """
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def _window_all(x: np.ndarray, k: int, axis: int) -> np.ndarray:
    """``out[i] = all(x[i:i+k])`` along ``axis`` (length ``n - k + 1``) for bool ``x``."""

    def cut(a: np.ndarray, start: int, stop: int | None) -> np.ndarray:
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, stop)
        return a[tuple(index)]

    a, width = x, 1  # invariant: a[i] = all(x[i:i+width])
    while 2 * width <= k:
        a = cut(a, 0, a.shape[axis] - width) & cut(a, width, None)
        width *= 2
    n_out = x.shape[axis] - k + 1
    return cut(a, 0, n_out) & cut(a, k - width, k - width + n_out)


def erode_square(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a ``(2r+1)×(2r+1)`` square, pixels outside the array being 0.

    Equal to ``radius`` iterations of a 3×3 erosion of ``pad(mask, 1)`` (zeros), as
    ``cv2.erode`` computes it in boundary-iou-api.

    Args:
      mask: ``[H, W]`` bool (or 0/1 integer) mask.
      radius: ``r >= 0``.

    Returns:
      ``[H, W]`` bool eroded mask.
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if radius <= 0:
        return m.copy()
    k, (h, w) = 2 * radius + 1, m.shape
    padded = np.zeros((h + 2 * radius, w), bool)  # zeros outside (np.pad is slower)
    padded[radius : radius + h] = m
    rows = _window_all(padded, k, axis=0)
    padded = np.zeros((h, w + 2 * radius), bool)
    padded[:, radius : radius + w] = rows
    return _window_all(padded, k, axis=1)


def mask_to_boundary(
    mask: np.ndarray, dilation_ratio: float = DILATION_RATIO, *, dilation: int | None = None
) -> np.ndarray:
    """The inner boundary band of a binary mask (boundary-iou-api ``mask_to_boundary``).

    Args:
      mask: ``[H, W]`` bool or 0/1 integer, the full image (the image size sets ``d``).
      dilation_ratio: ``d = max(1, round(dilation_ratio · image diagonal))``.
      dilation: explicit ``d`` in pixels (overrides ``dilation_ratio``).

    Returns:
      ``[H, W]`` bool: mask pixels within Chebyshev distance ``d`` of a non-mask pixel
      or of the image border.
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {m.shape}")
    h, w = m.shape
    d = boundary_dilation(h, w, dilation_ratio) if dilation is None else int(dilation)
    out = np.zeros((h, w), bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size:
        cols = np.flatnonzero(m.any(axis=0))
        _crop_boundary(m, out, (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1), d)
    return out


def _crop_boundary(mask: np.ndarray, out: np.ndarray, box: tuple[int, int, int, int], d: int) -> None:
    """Write the boundary of ``mask`` into ``out`` inside ``box = (y0, y1, x0, x1)``, a box
    that contains every mask pixel (outside it the boundary is empty)."""
    y0, y1, x0, x1 = box
    crop = mask[y0:y1, x0:x1].astype(bool, copy=False)
    out[y0:y1, x0:x1] = crop & ~erode_square(crop, d)


def rles_to_boundary_rles(
    rles: Sequence[dict], dilation_ratio: float = DILATION_RATIO
) -> list[dict]:
    """Boundary of every COCO RLE mask, as RLE (decoded one at a time: bounded memory).

    Args:
      rles: compressed COCO RLEs ``{"size": [H, W], "counts": ...}``.
      dilation_ratio: as in :func:`mask_to_boundary`, from each RLE's own image size.

    Returns:
      one compressed RLE per input, same ``size``.
    """
    from pycocotools import mask as mask_utils

    out = []
    for rle in rles:
        h, w = rle["size"]
        boundary = np.zeros((h, w, 1), np.uint8, order="F")  # pycocotools' layout: no copy to encode
        x, y, bw, bh = (int(round(v)) for v in mask_utils.toBbox(rle))
        if bw > 0 and bh > 0:
            d = boundary_dilation(h, w, dilation_ratio)
            _crop_boundary(mask_utils.decode(rle), boundary[:, :, 0], (y, y + bh, x, x + bw), d)
        out.append(mask_utils.encode(boundary)[0])
    return out


def boundary_mask_iou(
    dt_rles: Sequence[dict],
    gt_rles: Sequence[dict],
    iscrowd: Sequence[int],
    dt_boundaries: Sequence[dict],
    gt_boundaries: Sequence[dict],
) -> np.ndarray:
    """AP^B* IoU matrix: ``min(mask IoU, boundary IoU)``, mask IoU alone for crowd GT.

    As boundary-iou-api's ``compute_iou`` (``iou_type="boundary"``); a crowd column
    is pycocotools' crowd IoU ``|P ∩ G| / |P|``.

    Args:
      dt_rles, gt_rles: ``D`` and ``G`` compressed RLE masks of one image.
      iscrowd: ``[G]`` 0/1.
      dt_boundaries, gt_boundaries: their boundaries (:func:`rles_to_boundary_rles`).

    Returns:
      ``[D, G]`` float64 (``[0, G]`` or ``[D, 0]`` when either side is empty).
    """
    from pycocotools import mask as mask_utils

    crowd = np.asarray(iscrowd, dtype=np.uint8).reshape(-1)
    if len(dt_rles) == 0 or len(gt_rles) == 0:
        return np.zeros((len(dt_rles), len(gt_rles)))
    mask_iou = np.asarray(mask_utils.iou(list(dt_rles), list(gt_rles), list(crowd)), np.float64)
    boundary_iou = np.asarray(mask_utils.iou(list(dt_boundaries), list(gt_boundaries), list(crowd)))
    regular = crowd == 0
    mask_iou[:, regular] = np.minimum(mask_iou[:, regular], boundary_iou[:, regular])
    return mask_iou


def boundary_iou_matrix(
    dt_rles: Sequence[dict],
    gt_rles: Sequence[dict],
    iscrowd: Sequence[int],
    dilation_ratio: float = DILATION_RATIO,
    *,
    min_iou: float = 0.0,
) -> np.ndarray:
    """:func:`boundary_mask_iou`, extracting boundaries only where they can matter.

    Since the result is ``min(mask IoU, boundary IoU)``, a pair whose mask IoU is
    below ``min_iou`` stays below it whatever its boundary IoU: boundaries are
    computed only for the detections and ground truth of pairs with mask IoU ≥
    ``min_iou``, and the other pairs keep their mask IoU. Exact for every entry
    ≥ ``min_iou`` (AP matching uses thresholds ≥ 0.5, so ``min_iou=0.5`` loses nothing);
    ``min_iou=0`` computes every entry exactly.

    Args:
      dt_rles, gt_rles: ``D`` and ``G`` compressed RLE masks of one image.
      iscrowd: ``[G]`` 0/1.
      dilation_ratio: boundary width as a fraction of the image diagonal.
      min_iou: see above.

    Returns:
      ``[D, G]`` float64.
    """
    from pycocotools import mask as mask_utils

    crowd = np.asarray(iscrowd, dtype=np.uint8).reshape(-1)
    if len(dt_rles) == 0 or len(gt_rles) == 0:
        return np.zeros((len(dt_rles), len(gt_rles)))
    ious = np.asarray(mask_utils.iou(list(dt_rles), list(gt_rles), list(crowd)), np.float64)
    needed = (ious >= min_iou) & (crowd == 0)[None, :]
    rows, cols = np.flatnonzero(needed.any(1)), np.flatnonzero(needed.any(0))
    if rows.size:
        dt_b = rles_to_boundary_rles([dt_rles[i] for i in rows], dilation_ratio)
        gt_b = rles_to_boundary_rles([gt_rles[j] for j in cols], dilation_ratio)
        b_iou = np.asarray(mask_utils.iou(dt_b, gt_b, [0] * len(cols)), np.float64)
        sub = np.ix_(rows, cols)
        ious[sub] = np.minimum(ious[sub], b_iou)
    return ious
