"""Panoptic predictions of a detector with a segmentation head: files and PQ.

:class:`PanopticPredictionWriter` turns each image's detections into a panoptic
segmentation (:class:`~msvision.evaluation.panoptic_postprocess.PanopticPostProcess`),
writes it in COCO panoptic format — one PNG per image (segment id = R + 256·G + 256²·B)
under ``<out_dir>/`` and ``<out_dir>.json`` with the ``segments_info`` — and scores the
folder against the ground truth with :mod:`msvision.evaluation.panoptic` (PQ, SQ, RQ
overall, things, stuff; fractions). :class:`PanopticGroundTruth` is a split's ground truth
(categories, per-image annotations, PNG folder), read once by every evaluation step that needs it.

:func:`panoptic_to_coco_instances` is panopticapi's
``convert_panoptic_to_detection_coco_format`` (``things_only=False``, as DetSeg
``tools/convert_coco_panoptic.py``): every segment, thing or stuff, one COCO instance
annotation (RLE of the whole segment, its ``bbox``, ``iscrowd``), the ground truth of the
``bbox``/``segm`` AP of a panoptic run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from msvision.evaluation.panoptic import PanopticQuality, id_to_rgb, read_id_map
from msvision.evaluation.panoptic_postprocess import PanopticPostProcess

PQ_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


def _load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def panoptic_segmentation(postprocess: PanopticPostProcess, probs: np.ndarray, mask_boxes: np.ndarray,
                          scores: np.ndarray, labels: np.ndarray, input_size: tuple[int, int],
                          orig_size: tuple[int, int], *, label_is_thing: Sequence[bool],
                          label_to_category: Sequence[int]) -> tuple[np.ndarray, list[dict]]:
    """One image's panoptic segmentation from ``Detector.predict`` outputs (evaluation and
    ``msvision.predict``): ``(ids [h0, w0] int32, segments_info)`` of ``postprocess``.

    Args:
      probs: ``[K, S, S]`` mask probabilities of the valid detections on ``mask_boxes``.
      mask_boxes: ``[K, 4]`` ``(x0, y0, x1, y1)`` in ORIGINAL image pixels; mapped to the
        network input here, where the steps run.
      scores, labels: ``[K]`` class scores and contiguous labels.
      input_size, orig_size: ``(h, w)`` at the network input and originally.
      label_is_thing, label_to_category: ``[num_classes]`` isthing flags and dataset category ids.
    """
    h_in, w_in = (int(v) for v in input_size)
    h0, w0 = (int(v) for v in orig_size)
    scale = np.array([w_in / w0, h_in / h0, w_in / w0, h_in / h0])
    boxes = np.asarray(mask_boxes, np.float64).reshape(-1, 4) * scale
    return postprocess(probs, boxes, scores, labels, (h_in, w_in), (h0, w0), label_is_thing=label_is_thing,
                       label_to_category=label_to_category)


@dataclasses.dataclass(frozen=True, eq=False)
class PanopticGroundTruth:
    """A COCO panoptic split's ground truth (load with :meth:`load`).

    Attributes:
      json_path: the COCO panoptic JSON; png_dir: the folder of its PNGs.
      categories: the JSON's category records (``id``, ``isthing``, …).
      by_image: ``{image_id: annotation}``, each with the PNG ``file_name`` and ``segments_info``.
    """

    json_path: str
    png_dir: str
    categories: list
    by_image: dict

    @classmethod
    def load(cls, json_path: str, png_dir: str) -> "PanopticGroundTruth":
        data = _load_json(json_path)
        return cls(json_path, png_dir, data["categories"], {int(a["image_id"]): a for a in data["annotations"]})

    def isthing(self) -> dict[int, bool]:
        """``{category_id: isthing}`` (a category without the flag is a thing)."""
        return {int(c["id"]): bool(c.get("isthing", 1)) for c in self.categories}

    def label_is_thing(self, label_to_category: Sequence[int]) -> list[bool]:
        """``[K]`` isthing of each contiguous label of a model.

        Raises:
          KeyError: a model category is not a panoptic category of this split.
        """
        isthing = self.isthing()
        unknown = [int(c) for c in label_to_category if int(c) not in isthing]
        if unknown:
            raise KeyError(f"model categories {unknown[:5]} are not panoptic categories of {self.json_path}")
        return [isthing[int(c)] for c in label_to_category]

    def id_map(self, image_id: int) -> np.ndarray:
        """``[H, W]`` segment ids of an image's ground-truth PNG."""
        return read_id_map(os.path.join(self.png_dir, self.by_image[int(image_id)]["file_name"]))


class PanopticPredictionWriter:
    """Post-processes, writes and scores panoptic predictions, image by image.

    Args:
      gt_json: the ground-truth COCO panoptic JSON (``categories`` with ``isthing``,
        ``annotations`` with each image's PNG ``file_name``).
      gt_dir: its PNG folder.
      out_dir: folder of the predicted PNGs (created); the JSON is ``out_dir + '.json'``.
      label_to_category: ``[K]`` category id of each contiguous label of the model.
      postprocess: the six post-processing steps (``eval.panoptic``).
    """

    def __init__(self, gt_json: str, gt_dir: str, out_dir: str, label_to_category: Sequence[int],
                 postprocess: PanopticPostProcess = PanopticPostProcess()):
        ground_truth = PanopticGroundTruth.load(gt_json, gt_dir)
        self.gt_dir, self.out_dir = gt_dir, out_dir
        self.postprocess = postprocess
        self.categories = ground_truth.categories
        self.label_to_category = [int(c) for c in label_to_category]
        self.label_is_thing = ground_truth.label_is_thing(self.label_to_category)
        self.gt_by_image = ground_truth.by_image
        self.annotations: list[dict] = []
        self.pq = PanopticQuality(self.categories)
        os.makedirs(out_dir, exist_ok=True)

    def add(self, image_id: int, probs: np.ndarray, mask_boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
            input_size: tuple[int, int], orig_size: tuple[int, int]) -> tuple[np.ndarray, list[dict]]:
        """One image: post-process, write its PNG, add it to PQ; returns ``(ids, segments_info)``.

        Args:
          probs: ``[K, S, S]`` mask probabilities of the valid detections on ``mask_boxes``.
          mask_boxes: ``[K, 4]`` ``(x0, y0, x1, y1)`` in ORIGINAL image pixels
            (``Detector.predict``); mapped to the network input here, where the steps run.
          scores, labels: ``[K]`` class scores and contiguous labels.
          input_size, orig_size: ``(h, w)`` at the network input and originally.
        """
        ids, segments = panoptic_segmentation(self.postprocess, probs, mask_boxes, scores, labels, input_size,
                                              orig_size, label_is_thing=self.label_is_thing,
                                              label_to_category=self.label_to_category)
        gt = self.gt_by_image.get(int(image_id))
        file_name = gt["file_name"] if gt is not None else f"{int(image_id)}.png"
        Image.fromarray(id_to_rgb(ids)).save(os.path.join(self.out_dir, file_name))
        self.annotations.append({"image_id": int(image_id), "file_name": file_name, "segments_info": segments})
        if gt is not None:
            gt_ids = read_id_map(os.path.join(self.gt_dir, gt["file_name"]))
            self.pq.add(gt_ids, gt["segments_info"], ids, segments, image_id=image_id)
        return ids, segments

    def finish(self) -> dict[str, float]:
        """Writes ``out_dir.json``; returns ``{"PQ": …, "SQ": …, …, "PQ_st": …}`` (fractions)
        and the category counts ``n``, ``n_th``, ``n_st``."""
        with open(self.out_dir.rstrip("/") + ".json", "w") as f:
            json.dump({"annotations": self.annotations, "categories": self.categories}, f)
        return self.pq.summary()


def panoptic_to_coco_instances(panoptic_json: str, panoptic_dir: str, image_ids: Optional[set] = None):
    """COCO instances ground truth (a ``pycocotools.coco.COCO``) of a panoptic split.

    Every listed segment (thing or stuff) becomes one annotation: ``segmentation`` the RLE
    of its pixels in the PNG, ``bbox`` and ``iscrowd`` from ``segments_info``, ``area`` the
    pixel count (panopticapi's converter, ``things_only=False``).
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    data = _load_json(panoptic_json)
    images = [im for im in data["images"] if image_ids is None or int(im["id"]) in image_ids]
    keep = {int(im["id"]) for im in images}
    annotations = []
    for ann in data["annotations"]:
        if int(ann["image_id"]) not in keep:
            continue
        ids = read_id_map(os.path.join(panoptic_dir, ann["file_name"]))
        for seg in ann["segments_info"]:
            mask = np.asfortranarray((ids == seg["id"]).astype(np.uint8))
            rle = mask_utils.encode(mask)
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": len(annotations) + 1, "image_id": int(ann["image_id"]),
                                "category_id": int(seg["category_id"]), "iscrowd": int(seg.get("iscrowd", 0)),
                                "bbox": [float(v) for v in seg["bbox"]], "area": int(mask.sum()),
                                "segmentation": rle})
    categories = [{k: v for k, v in c.items()} for c in data["categories"]]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def single_category_baseline(gt_json: str, gt_dir: str, category_id: Optional[int] = None) -> dict[str, float]:
    """PQ of the trivial prediction "every pixel is one segment of ``category_id``" (default: the
    stuff category of largest total area in this ground truth, which favours the baseline), the
    reference a panoptic model has to beat. Returns the summary plus ``category_id``."""
    gt = _load_json(gt_json)
    if category_id is None:
        stuff = {int(c["id"]) for c in gt["categories"] if not c.get("isthing", 1)}
        area: dict[int, float] = {}
        for ann in gt["annotations"]:
            for seg in ann["segments_info"]:
                if int(seg["category_id"]) in stuff:
                    area[int(seg["category_id"])] = area.get(int(seg["category_id"]), 0) + seg["area"]
        category_id = max(area, key=area.get)
    pq = PanopticQuality(gt["categories"])
    for ann in gt["annotations"]:
        gt_ids = read_id_map(os.path.join(gt_dir, ann["file_name"]))
        pq.add(gt_ids, ann["segments_info"], np.ones_like(gt_ids), [{"id": 1, "category_id": category_id}])
    return dict(pq.summary(), category_id=category_id)


__all__ = ["PanopticGroundTruth", "PanopticPredictionWriter", "panoptic_segmentation", "panoptic_to_coco_instances",
           "single_category_baseline", "PQ_KEYS"]
