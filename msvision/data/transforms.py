"""Per-record data augmentation (numpy), DETR's recipe (thesis section 2.4).

Training: horizontal flip with probability ``hflip_prob`` (0.5); then either
(probability ``1 - crop_prob``) resize the shortest edge to a random value of
``scales`` (480, 512, …, 800) with the longest edge capped at ``max_size``
(1333), or (probability ``crop_prob``) resize the shortest edge to a random
value of ``crop_resize_scales`` (400, 500, 600), crop a random window whose
width and height are uniform integers in ``[crop_min, crop_max]`` (384, 600;
clipped to the image), then resize as in the first branch. This is DETR's
``RandomSelect(RandomResize(scales), Compose(RandomResize([400, 500, 600]),
RandomSizeCrop(384, 600), RandomResize(scales)))``.
Evaluation: shortest edge ``eval_scale`` (800), longest edge ≤ ``eval_max_size``.

Every transform is split in two steps so that the output size is known without
decoding the image (the pipeline chooses a batch's bucket shape from the sizes
of *all* images of the global batch, across processes):

1. ``plan = sample_train_plan(size, rng, augment)`` draws all random numbers
   from an explicit ``np.random.Generator`` and returns a list of operations,
   ``("flip",)``, ``("resize", (h, w))``, ``("crop", (top, left, h, w))``;
   ``plan_output_size(size, plan)`` is the final ``(h, w)``;
2. ``apply_plan(record, plan)`` applies them to the image (PIL bilinear), the
   boxes and the masks (nearest) consistently.

Boxes are ``(x0, y0, x1, y1)`` in pixels. A crop clips the boxes to the window
and drops those left with zero width or height, as DETR does; every
per-instance array of the record (``labels``, ``is_crowd``, ``masks``,
``segment_ids``, ``is_thing``) is filtered alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from PIL import Image

# Record keys holding one entry per instance (filtered together by a crop).
INSTANCE_KEYS = ("boxes", "labels", "is_crowd", "masks", "segment_ids", "is_thing")

Plan = list[tuple]


def resized_size(size: tuple[int, int], shortest: int,
                 max_size: Optional[int]) -> tuple[int, int]:
    """``(h, w)`` after resizing the shortest edge of ``size`` to ``shortest``
    with the longest edge at most ``max_size`` (DETR's
    ``get_size_with_aspect_ratio``, same rounding)."""
    h, w = size
    if max_size is not None:
        short_side, long_side = float(min(h, w)), float(max(h, w))
        if long_side / short_side * shortest > max_size:
            shortest = int(round(max_size * short_side / long_side))
    if (w <= h and w == shortest) or (h <= w and h == shortest):
        return h, w
    if w < h:
        return int(shortest * h / w), shortest
    return shortest, int(shortest * w / h)


def sample_train_plan(size: tuple[int, int], rng: np.random.Generator, augment) -> Plan:
    """Draw DETR's training augmentation for an image of ``size = (h, w)``.

    ``augment`` has the fields of ``data.augment`` (see
    :mod:`msvision.data.pipeline`). The random numbers are always drawn in the
    same order, so a plan depends only on ``size`` and the generator state.
    """
    plan: Plan = []
    if rng.random() < augment.hflip_prob:
        plan.append(("flip",))
    crop_branch = rng.random() < augment.crop_prob
    if crop_branch:
        shortest = int(rng.choice(np.asarray(augment.crop_resize_scales)))
        size = resized_size(size, shortest, None)
        plan.append(("resize", size))
        # RandomSizeCrop(crop_min, crop_max), bounds clipped to the image.
        h_hi, w_hi = min(size[0], augment.crop_max), min(size[1], augment.crop_max)
        crop_h = int(rng.integers(min(augment.crop_min, h_hi), h_hi + 1))
        crop_w = int(rng.integers(min(augment.crop_min, w_hi), w_hi + 1))
        top = int(rng.integers(0, size[0] - crop_h + 1))
        left = int(rng.integers(0, size[1] - crop_w + 1))
        plan.append(("crop", (top, left, crop_h, crop_w)))
        size = (crop_h, crop_w)
    shortest = int(rng.choice(np.asarray(augment.scales)))
    plan.append(("resize", resized_size(size, shortest, augment.max_size)))
    return plan


def eval_plan(size: tuple[int, int], scale: int, max_size: int) -> Plan:
    """Inference resize: shortest edge ``scale``, longest edge ≤ ``max_size``."""
    return [("resize", resized_size(size, scale, max_size))]


def plan_output_size(size: tuple[int, int], plan: Plan) -> tuple[int, int]:
    """``(h, w)`` of an image of ``size`` after ``plan``."""
    for op in plan:
        if op[0] == "resize":
            size = tuple(op[1])
        elif op[0] == "crop":
            size = tuple(op[1][2:])
    return size


def apply_plan(record: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Apply the operations of ``plan`` to a record (returns a new dict)."""
    record = dict(record)
    for op in plan:
        if op[0] == "flip":
            record = hflip(record)
        elif op[0] == "resize":
            record = resize(record, op[1])
        elif op[0] == "crop":
            record = crop(record, *op[1])
        else:
            raise ValueError(f"unknown operation {op}")
    return record


def hflip(record: dict[str, Any]) -> dict[str, Any]:
    """Mirror left–right: ``x → w - x`` for boxes, columns reversed for pixels."""
    record = dict(record)
    w = record["image"].shape[1]
    record["image"] = np.ascontiguousarray(record["image"][:, ::-1])
    boxes = record["boxes"]
    record["boxes"] = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]],
                               axis=1).astype(np.float32)
    if "masks" in record:
        record["masks"] = np.ascontiguousarray(record["masks"][:, :, ::-1])
    return record


def resize(record: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Resize to ``size = (h, w)``: image bilinear (PIL), masks nearest, boxes scaled."""
    record = dict(record)
    h, w = record["image"].shape[:2]
    if (h, w) == tuple(size):
        return record
    out_h, out_w = size
    record["image"] = resize_image(record["image"], size)
    scale = np.array([out_w / w, out_h / h, out_w / w, out_h / h], np.float32)
    record["boxes"] = (record["boxes"] * scale).astype(np.float32)
    if "masks" in record:
        record["masks"] = resize_masks_nearest(record["masks"], size)
    return record


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[h, w, 3] uint8`` → ``[H, W, 3]`` for ``size = (H, W)``, PIL bilinear."""
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_masks_nearest(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[n, h, w] bool`` → ``[n, H, W]``: each output pixel takes the input pixel
    under its centre (PIL's NEAREST convention)."""
    _, h, w = masks.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * (h / size[0])).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * (w / size[1])).astype(np.int64), w - 1)
    return masks[:, rows[:, None], cols[None, :]]


def crop(record: dict[str, Any], top: int, left: int, height: int,
         width: int) -> dict[str, Any]:
    """Keep the window ``[top, top+height) x [left, left+width)``; boxes are shifted,
    clipped to it, and dropped when they vanish (DETR's ``crop``)."""
    record = dict(record)
    record["image"] = record["image"][top:top + height, left:left + width]
    boxes = record["boxes"] - np.array([left, top, left, top], np.float32)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    record["boxes"] = boxes
    if "masks" in record:
        record["masks"] = record["masks"][:, top:top + height, left:left + width]
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    for key in INSTANCE_KEYS:
        if key in record:
            record[key] = record[key][keep]
    return record


class TrainTransform:
    """Picklable ``(record, rng) -> record`` training augmentation."""

    def __init__(self, augment):
        self.augment = augment

    def plan(self, size: tuple[int, int], rng: np.random.Generator) -> Plan:
        return sample_train_plan(size, rng, self.augment)

    def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return apply_plan(record, self.plan(record["image"].shape[:2], rng))


class EvalTransform:
    """Picklable ``record -> record`` inference resize."""

    def __init__(self, scale: int, max_size: int):
        self.scale, self.max_size = scale, max_size

    def plan(self, size: tuple[int, int], rng: Optional[np.random.Generator] = None) -> Plan:
        return eval_plan(size, self.scale, self.max_size)

    def __call__(self, record: dict[str, Any],
                 rng: Optional[np.random.Generator] = None) -> dict[str, Any]:
        return apply_plan(record, self.plan(record["image"].shape[:2]))


def default_scales(low: int = 480, high: int = 800, step: int = 32) -> Sequence[int]:
    """DETR's training scales ``(480, 512, …, 800)``."""
    return tuple(range(low, high + 1, step))
