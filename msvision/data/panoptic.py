"""Random-access source over a COCO panoptic dataset (PNG + JSON).

COCO panoptic format: a JSON with ``images``, ``annotations`` (one per image:
``file_name`` of the PNG and ``segments_info`` = list of ``{id, category_id,
iscrowd, bbox, area}``) and ``categories`` (with ``isthing``), plus a folder of
PNGs in which the segment id of a pixel is ``R + 256·G + 256²·B`` (0 = void).

Records have the format of :mod:`msvision.data.coco` (``image``, ``boxes``,
``labels``, ``is_crowd``, ``masks``, ``image_id``, ``orig_size``,
``file_name``), one entry per segment, things and stuff alike, plus

- ``segment_ids``: ``[n] int32`` the segment ids in the PNG,
- ``is_thing``: ``[n] bool`` the category is a thing.

Labels are contiguous over *all* panoptic categories (things and stuff), sorted
by COCO id.

Panoptic training (thesis §5.5; DetSeg ``tools/convert_coco_panoptic.py``) treats
stuff exactly like things: every segment is one box + mask instance over all panoptic
classes (133 on COCO), and crowd segments are dropped (``drop_crowd=True``, what
``data.source='coco_panoptic'`` builds; the released code's ``CocoDataset`` drops
them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from msvision.cli import check_record_list, check_records, read_json
from msvision.data.annotations import clean_instances, xywh_to_xyxy
from msvision.data.classes import ClassList
from msvision.data.images import decode_image
from msvision.data.stats import DataStats


def rgb_to_segment_ids(png: np.ndarray) -> np.ndarray:
    """``[h, w, 3] uint8`` panoptic PNG → ``[h, w] int32`` ids ``R + 256·G + 256²·B``."""
    png = png.astype(np.int32)
    return png[..., 0] + 256 * png[..., 1] + 256 * 256 * png[..., 2]


def segment_ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_segment_ids`: ``[h, w] int`` → ``[h, w, 3] uint8``."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


class PanopticSource:
    """A COCO panoptic JSON, its PNG folder and its image folder.

    Args:
      panoptic_json: the panoptic annotation file.
      panoptic_dir: folder of the panoptic PNGs.
      images: folder of the images.
      categories: the category list; defaults to the JSON's ``categories``
        (pass e.g. the loaded ``panoptic_coco_categories.json`` otherwise).
      with_masks: decode the segment masks from the PNG.
      max_instances: keep at most this many segments per image (largest boxes).
      drop_crowd: leave out the crowd segments (panoptic training, as the released code); when False
        they are kept with ``is_crowd`` set.
    """

    def __init__(self, panoptic_json: str, panoptic_dir: str, images: str, *,
                 categories: Optional[Sequence[dict]] = None, with_masks: bool = True,
                 max_instances: int = 100, drop_crowd: bool = False):
        self.annotations_path = os.fspath(panoptic_json)
        self.panoptic_dir = os.fspath(panoptic_dir)
        self.images_dir = os.fspath(images)
        self.with_masks = with_masks
        self.max_instances = max_instances
        self.stats = DataStats()
        dataset = read_json(self.annotations_path, "COCO panoptic annotations")
        check_records(dataset, "images", ("id", "file_name", "height", "width"), self.annotations_path)
        for k, annotation in enumerate(check_records(dataset, "annotations", ("image_id", "segments_info"),
                                                     self.annotations_path)):
            check_record_list(annotation["segments_info"], f"'annotations'[{k}]['segments_info']",
                              ("id", "category_id", "bbox"), self.annotations_path)
        if categories is None:
            check_records(dataset, "categories", ("id",), self.annotations_path)
        self.classes = ClassList.from_categories(categories if categories is not None else dataset["categories"],
                                                 with_isthing=True)
        self.category_to_label = {c: i for i, c in enumerate(self.classes.label_to_category)}
        self._label_is_thing = np.array(self.classes.label_is_thing, bool).reshape(-1)

        panoptic_by_image = {a["image_id"]: a for a in dataset["annotations"]}
        self._images: list[dict[str, Any]] = []
        for image in dataset["images"]:
            annotation = panoptic_by_image.get(image["id"], {"segments_info": [],
                                                             "file_name": None})
            segments = annotation["segments_info"]
            self.stats.annotations += len(segments)
            if drop_crowd:
                crowd = sum(bool(s.get("iscrowd", 0)) for s in segments)
                if crowd:
                    self.stats.add("crowd_segments_dropped", crowd)
                segments = [s for s in segments if not s.get("iscrowd", 0)]
            size = (int(image["height"]), int(image["width"]))
            labels = np.array([self.category_to_label.get(s["category_id"], -1)
                               for s in segments], np.int32)
            keep, boxes = clean_instances(xywh_to_xyxy([s["bbox"] for s in segments]),
                                          labels, size, max_instances, self.stats,
                                          image["file_name"])
            self._images.append({
                "image_id": int(image["id"]),
                "file_name": image["file_name"],
                "png_name": annotation["file_name"] or
                            os.path.splitext(image["file_name"])[0] + ".png",
                "size": size,
                "boxes": boxes,
                "labels": labels[keep],
                "is_crowd": np.array([bool(segments[k].get("iscrowd", 0)) for k in keep], bool),
                "segment_ids": np.array([segments[k]["id"] for k in keep], np.int32),
            })
        self.stats.images = len(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        return f"PanopticSource({self.annotations_path!r}, images={len(self)})"

    @property
    def image_ids(self) -> list[int]:
        return [entry["image_id"] for entry in self._images]

    def image_size(self, index: int) -> tuple[int, int]:
        return self._images[index]["size"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The record of image ``index``; unreadable files → next readable image."""
        index = int(index) % len(self)
        for attempt in range(len(self)):
            record = self._read((index + attempt) % len(self))
            if record is not None:
                return record
        raise RuntimeError(f"no readable image in {self.images_dir}")

    def _read(self, index: int) -> Optional[dict[str, Any]]:
        entry = self._images[index]
        image = decode_image(os.path.join(self.images_dir, entry["file_name"]))
        png = None
        if image is not None and self.with_masks:
            png = decode_image(os.path.join(self.panoptic_dir, entry["png_name"]), apply_orientation=False)
            if png is not None and png.shape != image.shape:
                png = None
        if image is not None and self.stats.check_size(entry["file_name"], entry["size"], image.shape[:2],
                                                         rescalable=False) is not None:
            return None  # the segments' boxes are in the annotated frame
        if image is None or (self.with_masks and png is None):
            self.stats.add("corrupt_image_reads")
            self.stats.add_bad_file("corrupt_images", entry["file_name"],
                                    "unreadable image or panoptic PNG for %s: replaced by the next readable one")
            return None
        record = {
            "image": image,
            "boxes": entry["boxes"].copy(),
            "labels": entry["labels"].copy(),
            "is_crowd": entry["is_crowd"].copy(),
            "is_thing": self._label_is_thing[entry["labels"]],
            "segment_ids": entry["segment_ids"].copy(),
            "image_id": entry["image_id"],
            "orig_size": tuple(image.shape[:2]),
            "file_name": entry["file_name"],
        }
        if self.with_masks:
            ids = rgb_to_segment_ids(png)
            record["masks"] = ids[None] == entry["segment_ids"][:, None, None]
        return record
