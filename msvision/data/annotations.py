"""Cleaning of per-image ground truth, shared by every source.

One function, :func:`clean_instances`, applies the bad-data rules (bad data is
skipped or clipped and counted, :mod:`msvision.data.stats`) to the annotations of
one image, in this order:

1. unknown category (label ``-1``) → dropped, counted;
2. box clipped to the image ``[0, w] x [0, h]`` → counted when it moved;
3. width or height < 1 px after clipping (zero-size, or outside the image)
   → dropped, counted;
4. more than ``max_instances`` left → the ``max_instances`` largest boxes are
   kept (in their original order), the rest dropped and counted;
5. nothing left → the image is kept as background, counted.
"""

from __future__ import annotations

import numpy as np

from msvision.data.stats import DataStats

MIN_BOX_SIDE = 1.0  # pixels; smaller boxes are degenerate


def xywh_to_xyxy(boxes_xywh) -> np.ndarray:
    """``[n, 4]`` COCO ``(x, y, w, h)`` → ``[n, 4] float32`` ``(x0, y0, x1, y1)``."""
    boxes = np.asarray(boxes_xywh, np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def clean_instances(
    boxes: np.ndarray,
    labels: np.ndarray,
    image_size: tuple[int, int],
    max_instances: int,
    stats: DataStats,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the bad-data rules to one image's annotations.

    Args:
      boxes: ``[n, 4] float32`` ``(x0, y0, x1, y1)`` in pixels of the image.
      labels: ``[n] int`` contiguous labels, ``-1`` for an unknown category.
      image_size: ``(h, w)`` of the image.
      max_instances: keep at most this many annotations (crowd included).
      stats: counters to update.
      where: file name used in warnings.

    Returns:
      ``keep``: ``[k] int64`` indices of the kept annotations (increasing), and
      ``boxes``: ``[k, 4] float32`` their boxes clipped to the image.
    """
    h, w = image_size
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    keep = np.arange(len(boxes))

    unknown = labels < 0
    if unknown.any():
        stats.add("unknown_category_dropped", int(unknown.sum()))
        stats.warn("unknown_category", "%s: %d annotation(s) with an unknown category dropped",
                   where, int(unknown.sum()))
        keep = keep[~unknown]

    clipped = boxes[keep].copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0, w)
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0, h)
    degenerate = ((clipped[:, 2] - clipped[:, 0]) < MIN_BOX_SIDE) | (
        (clipped[:, 3] - clipped[:, 1]) < MIN_BOX_SIDE)
    moved = np.any(clipped != boxes[keep], axis=1) & ~degenerate
    if moved.any():
        stats.add("boxes_clipped", int(moved.sum()))
    if degenerate.any():
        stats.add("degenerate_boxes_dropped", int(degenerate.sum()))
        stats.warn("degenerate_box", "%s: %d degenerate or out-of-image box(es) dropped",
                   where, int(degenerate.sum()))
        keep, clipped = keep[~degenerate], clipped[~degenerate]

    if len(keep) > max_instances:
        overflow = len(keep) - max_instances
        stats.add("overflow_dropped", overflow)
        stats.add("images_over_max_instances")
        stats.warn("overflow", "%s: %d objects > max_instances=%d, %d smallest dropped",
                   where, len(keep), max_instances, overflow)
        areas = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        largest = np.sort(np.argsort(-areas, kind="stable")[:max_instances])
        keep, clipped = keep[largest], clipped[largest]

    if len(keep) == 0:
        stats.add("images_without_annotations")
    return keep.astype(np.int64), clipped.astype(np.float32)
