"""Bucket shapes and collation of records into a padded :class:`~msvision.structures.Batch`.

Static shapes: a batch's images are padded to
one of a small fixed set of bucket shapes ``(H, W)`` — the smallest (by area)
that holds every image of the *global* batch — so a run compiles at most
``len(buckets)`` shapes. The default set is the square grid over the edge
lengths ``{0.5, 0.75, 1.0} · max_size`` rounded up to a multiple of
``bucket_divisor`` (128, the stride of P7, so every pyramid level has an exact
size): for ``max_size = 1333`` the edges are 768, 1024, 1408, i.e. 9 buckets
from 768×768 to 1408×1408.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from msvision.data.box_masks import box_frame_masks
from msvision.data.stats import logger
from msvision.data.transforms import resize
from msvision.structures import Batch

Bucket = tuple[int, int]


def default_buckets(max_size: int, divisor: int = 128,
                    fractions: Sequence[float] = (0.5, 0.75, 1.0)) -> list[Bucket]:
    """The ``(H, W)`` grid over edges ``round_up(f · max_size, divisor)``."""
    edges = sorted({divisor * math.ceil(f * max_size / divisor) for f in fractions})
    return [(h, w) for h in edges for w in edges]


def choose_bucket(sizes: Sequence[Bucket], buckets: Sequence[Bucket]) -> Bucket:
    """The smallest-area bucket with ``H >= max h`` and ``W >= max w`` of ``sizes``;
    the largest bucket when none fits (images are then shrunk by :func:`collate`)."""
    need_h = max(h for h, _ in sizes)
    need_w = max(w for _, w in sizes)
    fitting = [b for b in buckets if b[0] >= need_h and b[1] >= need_w]
    if fitting:
        return min(fitting, key=lambda b: (b[0] * b[1], b))
    return max(buckets, key=lambda b: (b[0] * b[1], b))


def shrunk_size(size: tuple[int, int], bucket: Bucket) -> tuple[int, int]:
    """``(h, w)`` of an image of ``size`` shrunk, keeping its aspect ratio, to fit ``bucket``;
    ``size`` itself when it fits."""
    h, w = size
    if h <= bucket[0] and w <= bucket[1]:
        return h, w
    scale = min(bucket[0] / h, bucket[1] / w)
    return min(bucket[0], max(1, int(h * scale))), min(bucket[1], max(1, int(w * scale)))


def fit_into(record: dict[str, Any], bucket: Bucket) -> dict[str, Any]:
    """Shrink a record (keeping its aspect ratio) when its image exceeds ``bucket``.

    Only happens for images whose size differed from the planned one (a replaced
    corrupt image, a wrong size in the annotation file)."""
    h, w = record["image"].shape[:2]
    size = shrunk_size((h, w), bucket)
    if size == (h, w):
        return record
    logger.warning("%s: image of size %s shrunk to %s to fit bucket %s",
                   record.get("file_name"), (h, w), size, bucket)
    return resize(record, size)


def collate(records: Sequence[dict[str, Any]], bucket: Bucket, max_instances: int,
            with_masks: bool = False, mask_format: str = "image", box_mask_size: Optional[int] = None) -> Batch:
    """Pad records into a :class:`Batch` of numpy arrays.

    Args:
      records: transformed records (see :mod:`msvision.data.coco`) whose images
        fit in ``bucket``.
      bucket: ``(H, W)`` padded image shape.
      max_instances: ``M``, ground-truth slots per image; extra objects (none if
        the source already capped them) are dropped, smallest boxes first.
      with_masks: also pad ``records[i]["masks"]`` to ``[B, M, H, W]``.
      mask_format: ``'image'`` (the padded full-image masks) or ``'box'`` (box-frame
        coverage grids ``[B, M, S, S]`` uint8 with their boxes in ``Batch.mask_boxes``,
        S = ``box_mask_size``, which the box format needs; :mod:`msvision.data.box_masks`).
        The pipeline passes ``data.mask_format`` and ``data.box_mask_size``.
    """
    if mask_format not in ("image", "box"):
        raise ValueError(f"mask_format must be 'image' or 'box', got {mask_format!r}")
    box_frames = with_masks and mask_format == "box"
    if box_frames and box_mask_size is None:
        raise ValueError("mask_format='box' needs box_mask_size (data.box_mask_size)")
    batch_size = len(records)
    height, width = bucket
    images = np.zeros((batch_size, height, width, 3), np.uint8)
    image_sizes = np.zeros((batch_size, 2), np.int32)
    orig_sizes = np.zeros((batch_size, 2), np.int32)
    image_ids = np.zeros((batch_size,), np.int32)
    boxes = np.zeros((batch_size, max_instances, 4), np.float32)
    labels = np.zeros((batch_size, max_instances), np.int32)
    valid = np.zeros((batch_size, max_instances), bool)
    is_crowd = np.zeros((batch_size, max_instances), bool)
    masks = np.zeros((batch_size, max_instances, height, width), bool) if with_masks and not box_frames else None
    mask_boxes = None
    if box_frames:
        masks = np.zeros((batch_size, max_instances, box_mask_size, box_mask_size), np.uint8)
        mask_boxes = np.zeros((batch_size, max_instances, 4), np.float32)
    for i, record in enumerate(records):
        record = fit_into(record, bucket)
        h, w = record["image"].shape[:2]
        images[i, :h, :w] = record["image"]
        image_sizes[i] = (h, w)
        orig_sizes[i] = record["orig_size"]
        image_ids[i] = record["image_id"]
        keep = np.arange(len(record["boxes"]))
        if len(keep) > max_instances:
            b = record["boxes"]
            areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            keep = np.sort(np.argsort(-areas, kind="stable")[:max_instances])
        n = len(keep)
        boxes[i, :n] = record["boxes"][keep]
        labels[i, :n] = record["labels"][keep]
        is_crowd[i, :n] = record["is_crowd"][keep]
        valid[i, :n] = True
        if box_frames:
            mask_boxes[i, :n], masks[i, :n] = box_frame_masks(record["masks"][keep], box_mask_size)
        elif with_masks:
            masks[i, :n, :h, :w] = record["masks"][keep]
    return Batch(images=images, image_sizes=image_sizes, orig_sizes=orig_sizes,
                 image_ids=image_ids, boxes=boxes, labels=labels, valid=valid,
                 is_crowd=is_crowd, masks=masks, mask_boxes=mask_boxes)
