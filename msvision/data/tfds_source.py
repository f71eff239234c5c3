"""TFDS as a second source, and conversion of COCO folders to TFDS ArrayRecord.

Reading: :class:`TfdsSource` wraps ``tfds.data_source(name, split=…,
data_dir=…)`` (random access over ArrayRecord files, no TensorFlow needed) and
returns the record format of :mod:`msvision.data.coco`. It reads ``coco/2017``
and any TFDS dataset with the same features: ``image``, ``image/id``,
``objects/bbox`` (normalized ``(ymin, xmin, ymax, xmax)``), ``objects/label``,
optionally ``objects/is_crowd`` and ``image/filename``. Boxes only: ``coco/2017``
has no instance masks.

Images are decoded as people see them (:mod:`msvision.data.images`: the EXIF orientation
applied), not by TFDS's decoder, which ignores the orientation. The normalized boxes of
a TFDS dataset are in the frame that decoder delivers, the image as stored (that is how
every TFDS pipeline pairs them), so they are turned with the pixels
(:func:`orient_normalized_boxes`): image and boxes stay aligned and come in the
orientation a viewer shows. Datasets written by :func:`convert_coco_to_tfds` store every
image already oriented.

Writing: :func:`convert_coco_to_tfds` turns COCO-format splits (any
:class:`~msvision.data.coco.CocoSource`) into a TFDS dataset in ArrayRecord
format, readable by :class:`TfdsSource`::

    python -m msvision.data.tfds_source --name my_coco --data-dir ~/tensorflow_datasets \\
        --split train=data/mine/train/instances.json:data/mine/train/images \\
        --split validation=data/mine/val/instances.json:data/mine/val/images

Without TensorFlow (checked with tensorflow-datasets 4.9.10):

- ``tfds.dataset_builders.store_as_tfds_dataset`` fails: ``AdhocBuilder.
  _split_generators`` runs ``isinstance(dataset, tf.data.Dataset)``, which
  imports TensorFlow. We subclass ``AdhocBuilder`` and override that one method
  for plain iterables; everything else (serialization with TFDS's own protos,
  ArrayRecord writing, ``dataset_info.json``) is TFDS's.
- Building any dataset evaluates ``importlib_resources.abc.Traversable``
  (``DatasetBuilder.code_path``) but TFDS declares ``importlib_resources`` only
  for Python < 3.9 (tensorflow/datasets#11212). When the package is missing we
  alias it to the standard library's ``importlib.resources``, which has the same
  ``abc.Traversable``. Reading needs neither workaround.
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.resources.abc
import io
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from msvision.data.annotations import clean_instances
from msvision.data.classes import ClassList
from msvision.data.images import decode_image, exif_orientation, read_image, read_image_size
from msvision.data.stats import DataStats

# COCO ids of the 80 detection categories, in the order of coco/2017's labels.
COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


def _tfds():
    try:
        import importlib_resources  # noqa: F401
    except ImportError:  # tensorflow/datasets#11212, see the module docstring
        sys.modules.setdefault("importlib_resources", importlib.resources)
    import tensorflow_datasets as tfds
    return tfds


def _as_list(value) -> list:
    return [] if value is None else list(value)


# Where a point (x, y) of the stored image, in normalized coordinates, lands in the image
# as seen, for each EXIF orientation (Pillow's ImageOps.exif_transpose: 3 turns it 180°,
# 6 a quarter turn clockwise, 8 counter-clockwise, 2/4 mirror it, 5/7 transpose it).
_ORIENTED_POINT = {
    1: lambda x, y: (x, y),
    2: lambda x, y: (1 - x, y),
    3: lambda x, y: (1 - x, 1 - y),
    4: lambda x, y: (x, 1 - y),
    5: lambda x, y: (y, x),
    6: lambda x, y: (1 - y, x),
    7: lambda x, y: (1 - y, 1 - x),
    8: lambda x, y: (y, 1 - x),
}


def orient_normalized_boxes(boxes: np.ndarray, orientation: int) -> np.ndarray:
    """Normalized ``(ymin, xmin, ymax, xmax)`` boxes of the stored image, moved into the
    image as seen under EXIF ``orientation`` (1–8; anything else is taken as 1)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    point = _ORIENTED_POINT.get(int(orientation), _ORIENTED_POINT[1])
    x1, y1 = point(boxes[:, 1], boxes[:, 0])
    x2, y2 = point(boxes[:, 3], boxes[:, 2])
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2),
                     np.maximum(y1, y2), np.maximum(x1, x2)], axis=1).astype(np.float32)


class TfdsSource:
    """A split of a TFDS dataset (ArrayRecord) in msvision's record format.

    Args:
      name: TFDS name, e.g. ``"coco/2017"`` or a converted ``"my_coco"``.
      split: e.g. ``"train"``, ``"validation"``, ``"train[:1%]"``.
      data_dir: TFDS data directory (``~/tensorflow_datasets`` when empty).
      max_instances: keep at most this many boxes per image (largest).
      with_masks: must be False (TFDS COCO detection has no masks).

    Annotations are cleaned (and counted in ``stats``) when an example is read,
    so the counts grow with every epoch, unlike :class:`CocoSource` whose
    annotation counts are taken once when indexing the JSON.
    """

    def __init__(self, name: str, split: str = "train", data_dir: str = "", *,
                 max_instances: int = 100, with_masks: bool = False):
        if with_masks:
            raise ValueError("TFDS detection datasets carry no instance masks; "
                             "use data.source='coco' for masks")
        tfds = _tfds()
        self.name, self.split = name, split
        self.data_dir = os.fspath(data_dir) if data_dir else None
        self.max_instances = max_instances
        self.with_masks = False
        self.stats = DataStats()
        # Images left encoded: decoded here, in their EXIF orientation (module docstring).
        self._source = tfds.data_source(name, split=split, data_dir=self.data_dir,
                                        download=False,
                                        decoders={"image": tfds.decode.SkipDecoding()})
        info = self._source.dataset_info
        class_names = tuple(info.features["objects"]["label"].names)
        metadata = dict(info.metadata or {})
        if "label_to_category" in metadata:
            label_to_category = tuple(int(c) for c in metadata["label_to_category"])
        elif name.split(":")[0].split("/")[0] == "coco" and len(class_names) == 80:
            label_to_category = tuple(COCO_CATEGORY_IDS)
        else:
            label_to_category = tuple(range(len(class_names)))
        self.classes = ClassList(class_names, label_to_category)
        self.category_to_label = {c: i for i, c in enumerate(self.classes.label_to_category)}
        self.stats.images = len(self._source)
        self._sizes: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._source)

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}, images={len(self)})"

    def image_size(self, index: int) -> tuple[int, int]:
        """``(h, w)`` of image ``index`` as seen (EXIF orientation applied), from the
        image header (no full decoding)."""
        if index not in self._sizes:
            size = read_image_size(self._source[index]["image"])
            self._sizes[index] = size if size is not None else (1, 1)
        return self._sizes[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The record of example ``index``; an undecodable example is replaced by
        the next readable one, and counted."""
        index = int(index) % len(self)
        for attempt in range(len(self)):
            candidate = (index + attempt) % len(self)
            try:
                example = self._source[candidate]
                data = example["image"]
                image, reason = read_image(data)
                if image is None:
                    raise ValueError(reason)
                orientation = exif_orientation(data)
            except Exception as error:  # noqa: BLE001 - any reading or decoding failure
                self.stats.add("corrupt_image_reads")
                self.stats.add_bad_file("corrupt_images", f"{self.name}[{self.split}] example {candidate} ({error})",
                                        "unreadable %s: replaced by the next readable one")
                continue
            return self._to_record(example, image, candidate, orientation)
        raise RuntimeError(f"no readable example in {self.name}[{self.split}]")

    def _to_record(self, example: Mapping[str, Any], image: np.ndarray,
                   index: int, orientation: int = 1) -> dict[str, Any]:
        h, w = image.shape[:2]
        objects = example.get("objects", {})
        bbox = np.asarray(_as_list(objects.get("bbox")), np.float32).reshape(-1, 4)
        if orientation != 1:  # boxes of the stored frame, turned with the pixels
            bbox = orient_normalized_boxes(bbox, orientation)
        boxes = bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)
        labels = np.asarray(_as_list(objects.get("label")), np.int64).reshape(-1)
        labels = np.where((labels >= 0) & (labels < self.classes.num_classes), labels, -1)
        crowd = objects.get("is_crowd")
        is_crowd = (np.asarray(_as_list(crowd), bool).reshape(-1) if crowd is not None
                    else np.zeros(len(labels), bool))
        file_name = example.get("image/filename", f"{self.name}[{self.split}][{index}]")
        if isinstance(file_name, bytes):
            file_name = file_name.decode("utf-8")
        self.stats.add("annotations", len(labels))
        keep, boxes = clean_instances(boxes, labels, (h, w), self.max_instances,
                                      self.stats, file_name)
        return {
            "image": image,
            "boxes": boxes,
            "labels": labels[keep].astype(np.int32),
            "is_crowd": is_crowd[keep],
            "image_id": int(example.get("image/id", index)),
            "orig_size": (h, w),
            "file_name": file_name,
        }


# ---------------------------------------------------------------- conversion
def _jpeg_bytes(path: str) -> Optional[bytes]:
    """The file's bytes if it is a readable JPEG stored as seen; else (another format, or
    an EXIF orientation to apply, which TFDS's decoder ignores) re-encoded as JPEG; None
    if unreadable."""
    image = decode_image(path)
    if image is None:
        return None
    with open(path, "rb") as f:
        data = f.read()
    if data[:3] == b"\xff\xd8\xff" and exif_orientation(data) == 1:
        return data
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _examples(source):
    """``(key, example)`` pairs of a CocoSource in TFDS coco/2017's feature layout
    (already cleaned: clipped boxes, no degenerate or unknown annotations)."""
    for index, entry in enumerate(source._images):  # noqa: SLF001 - same package
        path = os.path.join(source.images_dir, entry["file_name"])
        data = _jpeg_bytes(path)
        if data is None:
            source.stats.add("corrupt_image_reads")
            source.stats.add_bad_file("corrupt_images", path, "unreadable image %s left out of the TFDS dataset")
            continue
        h, w = entry["size"]
        boxes = entry["boxes"] / np.array([w, h, w, h], np.float32)
        yield str(entry["image_id"]), {
            "image": data,
            "image/id": entry["image_id"],
            "image/filename": entry["file_name"],
            "objects": {
                "bbox": np.clip(boxes[:, [1, 0, 3, 2]], 0.0, 1.0).reshape(-1, 4),
                "label": entry["labels"].astype(np.int64),
                "is_crowd": entry["is_crowd"],
            },
        }


def convert_coco_to_tfds(splits: Mapping[str, Any], name: str, data_dir: str,
                         version: str = "1.0.0") -> str:
    """Write COCO-format splits as a TFDS ArrayRecord dataset; returns its folder.

    Args:
      splits: ``{split_name: CocoSource}``, all with the same categories.
      name: TFDS dataset name, then readable as ``TfdsSource(name, split, data_dir)``.
      data_dir: TFDS data directory to write into (``<data_dir>/<name>/<version>``).
      version: dataset version.

    The COCO category ids are stored in the dataset metadata
    (``label_to_category``) so labels map back to the original ids; examples keep
    the order of the annotation file (TFDS shuffling disabled). The annotations
    written are the cleaned ones (clipped boxes, degenerate and unknown-category
    ones dropped); unreadable images are left out.
    """
    tfds = _tfds()
    first = next(iter(splits.values()))
    for split, source in splits.items():
        if source.classes.label_to_category != first.classes.label_to_category:
            raise ValueError(f"split {split!r} has different categories")
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "image/id": np.int64,
        "image/filename": tfds.features.Text(),
        "objects": tfds.features.Sequence({
            "bbox": tfds.features.BBoxFeature(),
            "label": tfds.features.ClassLabel(names=list(first.classes.class_names)),
            "is_crowd": np.bool_,
        }),
    })

    class CocoFolderBuilder(tfds.dataset_builders.AdhocBuilder, skip_registration=True):
        """``store_as_tfds_dataset`` without the TensorFlow type check."""

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=features,
                description="COCO-format dataset converted by msvision.",
                disable_shuffling=True,  # keep the annotation file's image order
                metadata=tfds.core.MetadataDict(
                    label_to_category=list(first.classes.label_to_category)))

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: _examples(source) for split, source in splits.items()}

    builder = CocoFolderBuilder(name=name, version=version, features=features,
                                split_datasets=dict(splits), data_dir=data_dir,
                                file_format="array_record", disable_shuffling=True)
    if builder.is_prepared():
        raise RuntimeError(f"{builder.data_dir} already exists")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(verify_ssl=True))
    return os.fspath(builder.data_dir)


def main(argv=None) -> None:
    from msvision.data.coco import CocoSource

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="TFDS dataset name to create")
    parser.add_argument("--data-dir", required=True, help="TFDS data directory")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--split", action="append", required=True,
                        help="SPLIT=INSTANCES_JSON:IMAGE_DIR (repeatable)")
    args = parser.parse_args(argv)
    splits = {}
    for spec in args.split:
        split, paths = spec.split("=", 1)
        annotations, images = paths.rsplit(":", 1)
        splits[split] = CocoSource(annotations, images, max_instances=10**6)
    logging.basicConfig(level=logging.INFO)
    print(convert_coco_to_tfds(splits, args.name, args.data_dir, args.version))


if __name__ == "__main__":
    main()
