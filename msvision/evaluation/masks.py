"""Masks of segmentation heads on the host: RoI-grid probabilities → full-image binary masks.

A segmentation head returns, per detection, an ``S × S`` probability grid covering a
box (``Detections.masks`` on ``Detections.mask_boxes``, thesis §5.3.3). COCO ``segm``
results need binary masks of the original image: :func:`paste_masks_numpy` pastes
with mmdet's ``_do_paste_mask`` interpolation (pixel centres, bilinear,
``align_corners=False``, zero outside the grid; the same as the in-graph
:func:`msvision.models.heads.roi_mask.postprocess.paste_masks`), computing each mask only
on the pixels near its box (zero elsewhere by construction), then thresholds.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from msvision.structures import Detections


def paste_masks_numpy(probs: np.ndarray, boxes: np.ndarray, height: int, width: int,
                      threshold: float = 0.5) -> np.ndarray:
    """``probs [K, S, S]`` on ``boxes [K, 4]`` ``(x0, y0, x1, y1)`` pixels → ``[K, height, width]`` bool.

    Pixel (i, j) reads the grid at ``u = (j + 0.5 - x0) / (x1 - x0) · S − 0.5`` (and v
    likewise) by bilinear interpolation, zero outside ``[0, S)``; ``p > threshold``.
    """
    probs = np.asarray(probs, np.float32)
    out = np.zeros((probs.shape[0], height, width), bool)
    for i, rows, cols, values in pasted_windows(probs, boxes, height, width):
        out[i, rows, cols] = values > threshold
    return out


def pasted_windows(probs, boxes: np.ndarray, height: int, width: int):
    """Yields ``(i, rows, cols, values)`` for each grid ``probs[i]`` (``[Sh, Sw]``, grids may
    differ in shape) on ``boxes[i]`` ``(x0, y0, x1, y1)`` pixels: ``values [len(rows), len(cols)]``
    float64, the pasted probabilities on the pixel window ``rows × cols`` (slices) around the box.
    Outside the window the paste is zero; empty windows are skipped."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    for i in range(len(boxes)):
        grid = np.asarray(probs[i], np.float64)
        size_h, size_w = grid.shape
        x0, y0, x1, y1 = boxes[i]
        # Pixels whose centre is more than one grid cell outside the box read zeros only.
        cw, ch = max(x1 - x0, 0.0) / size_w, max(y1 - y0, 0.0) / size_h
        c0, c1 = max(int(np.floor(x0 - cw)) - 1, 0), min(int(np.ceil(x1 + cw)) + 1, width)
        r0, r1 = max(int(np.floor(y0 - ch)) - 1, 0), min(int(np.ceil(y1 + ch)) + 1, height)
        if c1 <= c0 or r1 <= r0:
            continue
        wy = _axis_weights(y0, y1 - y0, size_h, r0, r1, np.arange(size_h, dtype=np.float64))
        wx = _axis_weights(x0, x1 - x0, size_w, c0, c1, np.arange(size_w, dtype=np.float64))
        yield i, slice(r0, r1), slice(c0, c1), wy @ grid @ wx.T


def _axis_weights(start: float, length: float, size: int, p0: int, p1: int, cells: np.ndarray) -> np.ndarray:
    """``[p1 - p0, size]`` interpolation weights of pixels ``p0 .. p1-1`` on one axis."""
    u = (np.arange(p0, p1, dtype=np.float64) + 0.5 - start) / max(length, 1e-6) * size - 0.5
    low = np.floor(u)
    frac = u - low
    return (np.where(cells[None] == low[:, None], 1.0 - frac[:, None], 0.0)
            + np.where(cells[None] == low[:, None] + 1.0, frac[:, None], 0.0))


def filled_box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``boxes [K, 4]`` ``(x0, y0, x1, y1)`` pixels → ``[K, height, width]`` bool: the pixels whose
    centre lies inside each box (the trivial mask prediction: the box filled)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx = np.arange(width) + 0.5
    cy = np.arange(height) + 0.5
    inside_x = (cx[None, :] >= boxes[:, 0:1]) & (cx[None, :] < boxes[:, 2:3])  # [K, W]
    inside_y = (cy[None, :] >= boxes[:, 1:2]) & (cy[None, :] < boxes[:, 3:4])  # [K, H]
    return inside_y[:, :, None] & inside_x[:, None, :]


def detection_box_masks(detections: Detections, image_sizes: np.ndarray) -> list[np.ndarray]:
    """Per image ``[K, h, w] bool``: each valid detection's box filled (:func:`filled_box_masks`).

    Args:
      detections: numpy ``Detections``, ``boxes [B, K, 4]`` in pixels of the images of ``image_sizes``.
      image_sizes: ``[B, 2]`` int (h, w).
    """
    out = []
    valid = np.asarray(detections.valid, bool)
    for b, (h, w) in enumerate(np.asarray(image_sizes).reshape(-1, 2).tolist()):
        masks = np.zeros((valid.shape[1], int(h), int(w)), bool)
        keep = np.flatnonzero(valid[b])
        masks[keep] = filled_box_masks(np.asarray(detections.boxes[b])[keep], int(h), int(w))
        out.append(masks)
    return out


def detection_image_masks(detections: Detections, image_sizes: np.ndarray,
                          threshold: float = 0.5) -> Optional[list[np.ndarray]]:
    """Per image ``[K, h, w] bool`` full-image masks of the detections (invalid ones empty).

    Args:
      detections: numpy ``Detections`` with ``masks [B, K, S, S]`` and ``mask_boxes
        [B, K, 4]`` in pixels of the images of ``image_sizes``.
      image_sizes: ``[B, 2]`` int (h, w) (e.g. ``Batch.orig_sizes``).

    Returns:
      None when the detections have no masks.
    """
    if detections.masks is None:
        return None
    out = []
    valid = np.asarray(detections.valid, bool)
    for b, (h, w) in enumerate(np.asarray(image_sizes).reshape(-1, 2).tolist()):
        masks = np.zeros((valid.shape[1], int(h), int(w)), bool)
        keep = np.flatnonzero(valid[b])
        if len(keep):
            masks[keep] = paste_masks_numpy(np.asarray(detections.masks[b])[keep],
                                            np.asarray(detections.mask_boxes[b])[keep], int(h), int(w), threshold)
        out.append(masks)
    return out
