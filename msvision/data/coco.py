"""Random-access source over a COCO-format detection dataset.

A COCO-format split is an ``instances_*.json`` (``images``, ``annotations``,
``categories``) plus a folder with the image files. :class:`CocoSource`
implements grain's ``RandomAccessDataSource`` protocol (``__len__``,
``__getitem__``) and is picklable (plain Python and numpy attributes), so grain
multiprocessing workers can receive it. Like every source in ``msvision.data`` it has
``classes``, its :class:`~msvision.data.classes.ClassList`.

Record format (numpy), shared by every source in ``msvision.data``:

- ``image``: ``[h, w, 3] uint8`` RGB as seen (EXIF orientation applied, :mod:`msvision.data.images`).
- ``boxes``: ``[n, 4] float32`` ``(x0, y0, x1, y1)`` in original pixels, clipped
  to the image.
- ``labels``: ``[n] int32`` contiguous labels ``0 … K-1`` (categories sorted by
  COCO id; ``classes.label_to_category[label]`` gives the id back).
- ``is_crowd``: ``[n] bool`` COCO ``iscrowd`` regions, kept as ignore regions.
- ``masks``: ``[n, h, w] bool``, only with ``with_masks=True``.
- ``image_id``: ``int``; ``orig_size``: ``(h, w)``; ``file_name``: ``str``.

Bad data is skipped or clipped and counted in ``source.stats`` (see
:mod:`msvision.data.annotations` and :mod:`msvision.data.stats`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Optional

import numpy as np
from pycocotools import mask as mask_utils

from msvision.cli import check_records, read_json
from msvision.data.annotations import clean_instances, xywh_to_xyxy
from msvision.data.classes import ClassList
from msvision.data.images import decode_image
from msvision.data.stats import DataStats
from msvision.data.transforms import resize_masks_nearest


def decode_segmentation(segmentation, box_xyxy, image_size) -> np.ndarray:
    """COCO ``segmentation`` (polygons, RLE or uncompressed RLE) → ``[h, w] bool``.

    A missing or malformed segmentation falls back to the filled box.
    """
    h, w = image_size
    try:
        if isinstance(segmentation, list):  # polygons
            polygons = [p for p in segmentation if len(p) >= 6]
            if not polygons:
                raise ValueError("no polygon with 3 points")
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, h, w)
        else:  # compressed RLE
            rle = dict(segmentation)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        mask = mask_utils.decode(rle).astype(bool)
        if mask.shape != (h, w):
            raise ValueError(f"mask of shape {mask.shape} for image {(h, w)}")
        return mask
    except (ValueError, TypeError, KeyError, AttributeError):
        mask = np.zeros((h, w), bool)
        x0, y0, x1, y1 = np.round(np.asarray(box_xyxy)).astype(int)
        mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
        return mask


class CocoSource:
    """A COCO instances file and its image folder as a random-access source.

    Args:
      annotations: path of the ``instances_*.json`` file.
      images: folder holding the ``file_name`` of every image.
      with_masks: decode instance masks into ``record["masks"]``.
      max_instances: keep at most this many annotations per image (largest boxes).
    """

    def __init__(self, annotations: str, images: str, *, with_masks: bool = False,
                 max_instances: int = 100):
        self.annotations_path = os.fspath(annotations)
        self.images_dir = os.fspath(images)
        self.with_masks = with_masks
        self.max_instances = max_instances
        self.stats = DataStats()
        dataset = read_json(self.annotations_path, "COCO instances annotations")
        check_records(dataset, "images", ("id", "file_name", "height", "width"), self.annotations_path)
        check_records(dataset, "annotations", ("image_id",), self.annotations_path, optional=True)
        check_records(dataset, "categories", ("id",), self.annotations_path, optional=True)
        self._index(dataset)

    # ------------------------------------------------------------------ index
    def _index(self, dataset: dict[str, Any]) -> None:
        self.classes = ClassList.from_categories(dataset.get("categories", []))
        self.category_to_label: dict[int, int] = {
            c: label for label, c in enumerate(self.classes.label_to_category)}

        per_image = defaultdict(list)
        for annotation in dataset.get("annotations", []):
            per_image[annotation["image_id"]].append(annotation)
        self.stats.annotations = sum(len(v) for v in per_image.values())
        known = {image["id"] for image in dataset["images"]}
        for image_id in sorted(set(per_image) - known, key=str):
            for _ in per_image[image_id]:
                self.stats.add("orphan_annotations")
            self.stats.bad_files.setdefault("orphan_annotations", []).append(f"image_id {image_id}")
            self.stats.warn("orphan_annotation", "%s: %d annotation(s) of image_id %s, which is not in 'images'; "
                            "dropped", self.annotations_path, len(per_image[image_id]), image_id)

        self._images: list[dict[str, Any]] = []
        for image in dataset["images"]:
            anns = per_image.get(image["id"], [])
            size = (int(image["height"]), int(image["width"]))
            boxes = xywh_to_xyxy([a.get("bbox", [0, 0, 0, 0]) for a in anns])
            labels = np.array([self.category_to_label.get(a.get("category_id"), -1)
                               for a in anns], np.int32)
            keep, boxes = clean_instances(boxes, labels, size, self.max_instances,
                                          self.stats, image["file_name"])
            entry = {
                "image_id": int(image["id"]),
                "file_name": image["file_name"],
                "size": size,
                "boxes": boxes,
                "labels": labels[keep],
                "is_crowd": np.array([bool(anns[k].get("iscrowd", 0)) for k in keep], bool),
            }
            if self.with_masks:
                entry["segmentations"] = [anns[k].get("segmentation") for k in keep]
            self._images.append(entry)
        self.stats.images = len(self._images)

    # --------------------------------------------------------------- protocol
    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        return (f"CocoSource({self.annotations_path!r}, images={len(self)}, "
                f"classes={self.classes.num_classes}, with_masks={self.with_masks})")

    def image_size(self, index: int) -> tuple[int, int]:
        """``(h, w)`` of image ``index`` from the annotation file (no decoding)."""
        return self._images[index]["size"]

    @property
    def image_ids(self) -> list[int]:
        return [entry["image_id"] for entry in self._images]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The record of image ``index``; an unreadable image is replaced by the next
        readable one (``index + 1``, ``index + 2``, …, wrapping), and counted."""
        index = int(index) % len(self)
        for attempt in range(len(self)):
            candidate = (index + attempt) % len(self)
            record = self._read(candidate)
            if record is not None:
                return record
        raise RuntimeError(f"no readable image in {self.images_dir}")

    def _read(self, index: int) -> Optional[dict[str, Any]]:
        entry = self._images[index]
        path = os.path.join(self.images_dir, entry["file_name"])
        image = decode_image(path)
        if image is None:
            self.stats.add("corrupt_image_reads")
            self.stats.add_bad_file("corrupt_images", path, "unreadable image %s: replaced by the next readable one")
            return None
        boxes = entry["boxes"]
        scale = self.stats.check_size(path, entry["size"], image.shape[:2])
        if scale is not None:
            if not scale.size:  # e.g. annotated in a photo's stored frame, read in its EXIF orientation
                return None
            # A resized copy: trust the pixels and rescale the ground truth (masks
            # are decoded at the annotated size and resized below).
            boxes = boxes * scale
        record = {
            "image": image,
            "boxes": boxes.copy(),
            "labels": entry["labels"].copy(),
            "is_crowd": entry["is_crowd"].copy(),
            "image_id": entry["image_id"],
            "orig_size": tuple(image.shape[:2]),
            "file_name": entry["file_name"],
        }
        if self.with_masks:
            masks = np.stack([decode_segmentation(s, b, entry["size"]) for s, b in
                              zip(entry["segmentations"], entry["boxes"])]) if len(boxes) \
                else np.zeros((0,) + entry["size"], bool)
            if masks.shape[1:] != image.shape[:2]:
                masks = resize_masks_nearest(masks, image.shape[:2])
            record["masks"] = masks
        return record
