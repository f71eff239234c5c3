"""COCO box and mask AP through pycocotools (thesis section 2.3).

Flow: ``Detections`` (numpy, boxes in original-image pixels) ->
:func:`detections_to_coco_results` -> :meth:`CocoEvaluator.add` (per batch) ->
:meth:`CocoEvaluator.evaluate` -> ``{"bbox/AP": ..., ...}``; :func:`format_table`
prints the standard 12-number summary.

Only the images that were added are evaluated (``params.imgIds``), so evaluating
a subset of a dataset gives that subset's AP. Metrics are fractions in ``[0, 1]``;
as in pycocotools a value is ``-1`` when no ground truth exists for it (e.g. no
small objects among the evaluated images).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from msvision.structures import Detections

logger = logging.getLogger(__name__)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

_TABLE_ROWS = (
    ("Average Precision", "(AP)", "0.50:0.95", "all", 100),
    ("Average Precision", "(AP)", "0.50", "all", 100),
    ("Average Precision", "(AP)", "0.75", "all", 100),
    ("Average Precision", "(AP)", "0.50:0.95", "small", 100),
    ("Average Precision", "(AP)", "0.50:0.95", "medium", 100),
    ("Average Precision", "(AP)", "0.50:0.95", "large", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "all", 1),
    ("Average Recall", "(AR)", "0.50:0.95", "all", 10),
    ("Average Recall", "(AR)", "0.50:0.95", "all", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "small", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "medium", 100),
    ("Average Recall", "(AR)", "0.50:0.95", "large", 100),
)


def mask_to_rle(mask: np.ndarray) -> dict:
    """``mask [H, W]`` bool → COCO RLE ``{"size": [H, W], "counts": str}`` (JSON-serialisable)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # JSON-serialisable
    return rle


def detections_to_coco_results(
    detections: Detections,
    image_ids: Sequence[int],
    label_to_category: Sequence[int],
    *,
    image_masks: Optional[Sequence[Optional[np.ndarray]]] = None,
) -> list[dict]:
    """Convert a batch of padded detections to COCO result dicts.

    Args:
      detections: ``Detections`` with ``boxes [B, K, 4]`` ``(x0, y0, x1, y1)`` in
        pixels of the ORIGINAL images, ``scores [B, K]``, ``labels [B, K]``
        contiguous, ``valid [B, K]`` (numpy or jax arrays).
      image_ids: ``[B]`` dataset image ids; ``-1`` (padding sample) is skipped.
      label_to_category: contiguous label -> the dataset's own category id.
      image_masks: optional per image a ``[K, H, W] bool`` array of full-image
        masks aligned with the detections (or None); adds ``segmentation`` RLE.
        (``detections.masks`` are per-box grids and must be pasted into the image
        first, which is the segmentation head's job.)

    Returns:
      list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
      (+ ``"segmentation"``) for every valid detection.
    """
    boxes = np.asarray(detections.boxes, np.float64)
    scores = np.asarray(detections.scores, np.float64)
    labels = np.asarray(detections.labels)
    valid = np.asarray(detections.valid, bool)
    image_ids = np.asarray(image_ids).reshape(-1)
    label_to_category = list(label_to_category)
    results = []
    for b, image_id in enumerate(image_ids.tolist()):
        if image_id < 0:
            continue
        masks = None if image_masks is None else image_masks[b]
        for k in np.flatnonzero(valid[b]):
            x0, y0, x1, y1 = boxes[b, k].tolist()
            result = {
                "image_id": int(image_id),
                "category_id": int(label_to_category[int(labels[b, k])]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(scores[b, k]),
            }
            if masks is not None:
                result["segmentation"] = mask_to_rle(np.asarray(masks[k]))
            results.append(result)
    return results


def _with_positive_ann_ids(coco):
    """pycocotools marks "unmatched" with gt id 0 in ``dtMatches``, so an annotation
    with id 0 can never be a true positive (a perfect prediction would score < 1).
    Renumber annotations 1..N in a copy when any id is < 1."""
    from pycocotools.coco import COCO

    anns = coco.dataset.get("annotations", [])
    if all(a.get("id", 0) >= 1 for a in anns):
        return coco
    logger.warning(
        "ground truth has annotation ids < 1, which pycocotools cannot match; "
        "renumbering annotations 1..%d for evaluation",
        len(anns),
    )
    dataset = copy.deepcopy(coco.dataset)
    for i, ann in enumerate(dataset["annotations"]):
        ann["id"] = i + 1
    fixed = COCO()
    fixed.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        fixed.createIndex()
    return fixed


def load_coco(path: Union[str, os.PathLike]):
    """A COCO instances JSON as a ``pycocotools.coco.COCO`` (without pycocotools' prints)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(os.fspath(path))


def write_results_json(path: Union[str, os.PathLike], results: Sequence[dict]) -> None:
    """Write COCO results as a JSON list (the format of the COCO evaluation server)."""
    with open(path, "w") as f:
        json.dump(list(results), f)


class CocoEvaluator:
    """Accumulates COCO results and computes AP/AR with pycocotools.

    Args:
      gt: path to a COCO instances JSON, or a ``pycocotools.coco.COCO``.
      iou_types: subset of ``("bbox", "segm", "boundary")``; ``"boundary"`` is mask AP
        with the Boundary IoU (:mod:`msvision.evaluation.coco_boundary`).
    """

    def __init__(self, gt, iou_types: Sequence[str] = ("bbox",)):
        if isinstance(gt, (str, os.PathLike)):
            gt = load_coco(gt)
        self.coco_gt = _with_positive_ann_ids(gt)
        for iou_type in iou_types:
            if iou_type not in ("bbox", "segm", "boundary"):
                raise ValueError(f"unsupported iou_type {iou_type!r}")
        self.iou_types = tuple(iou_types)
        self.results: list[dict] = []
        self.image_ids: set[int] = set()

    def reset(self) -> None:
        self.results = []
        self.image_ids = set()

    def add(self, results: Iterable[dict], *, image_ids: Optional[Iterable[int]] = None) -> None:
        """Add result dicts; ``image_ids`` also registers evaluated images that have no
        detections (an image with no detection still counts its ground truth)."""
        results = list(results)
        self.results.extend(results)
        self.image_ids.update(int(r["image_id"]) for r in results)
        if image_ids is not None:
            self.image_ids.update(int(i) for i in np.asarray(list(image_ids)).reshape(-1) if i >= 0)

    def _warn_missing_categories(self, image_ids: list[int]) -> None:
        ann_ids = self.coco_gt.getAnnIds(imgIds=image_ids)
        present = {a["category_id"] for a in self.coco_gt.loadAnns(ann_ids)}
        missing = sorted(set(self.coco_gt.getCatIds()) - present)
        if missing:
            logger.warning(
                "%d of %d categories have no ground truth in the %d evaluated images; "
                "they are excluded from the AP mean (category ids %s%s)",
                len(missing),
                len(self.coco_gt.getCatIds()),
                len(image_ids),
                missing[:20],
                " ..." if len(missing) > 20 else "",
            )

    def evaluate(self) -> dict[str, float]:
        """COCO metrics ``{"<iou_type>/<name>": value}`` for :data:`METRIC_NAMES`."""
        from pycocotools.cocoeval import COCOeval

        from msvision.evaluation.coco_boundary import BoundaryCOCOeval

        image_ids = sorted(self.image_ids)
        metrics: dict[str, float] = {}
        if not self.results:
            logger.warning(
                "CocoEvaluator: no detections were added (%d images registered); "
                "reporting all metrics as 0",
                len(image_ids),
            )
            for iou_type in self.iou_types:
                metrics.update({f"{iou_type}/{name}": 0.0 for name in METRIC_NAMES})
            return metrics
        self._warn_missing_categories(image_ids)
        for iou_type in self.iou_types:
            results = self.results
            if iou_type in ("segm", "boundary"):
                results = [r for r in results if "segmentation" in r]
                if not results:
                    logger.warning("CocoEvaluator: no segmentation results; %s metrics are 0", iou_type)
                    metrics.update({f"{iou_type}/{name}": 0.0 for name in METRIC_NAMES})
                    continue
            else:
                # loadRes would otherwise derive boxes from the masks.
                results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
            with contextlib.redirect_stdout(io.StringIO()) as log:
                coco_dt = self.coco_gt.loadRes(copy.deepcopy(results))
                if iou_type == "boundary":
                    coco_eval = BoundaryCOCOeval(self.coco_gt, coco_dt)
                else:
                    coco_eval = COCOeval(self.coco_gt, coco_dt, iou_type)
                coco_eval.params.imgIds = image_ids
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
            logger.debug("pycocotools %s output:\n%s", iou_type, log.getvalue())
            for name, value in zip(METRIC_NAMES, coco_eval.stats):
                metrics[f"{iou_type}/{name}"] = float(value)
        return metrics


def format_table(metrics: dict[str, float]) -> str:
    """The standard 12-line pycocotools summary for every iou type in ``metrics``."""
    lines = []
    iou_types = sorted({key.split("/", 1)[0] for key in metrics}, key=lambda t: (t != "bbox", t))
    for iou_type in iou_types:
        lines.append(f"IoU metric: {iou_type}")
        for name, (title, short, iou, area, max_dets) in zip(METRIC_NAMES, _TABLE_ROWS):
            value = metrics.get(f"{iou_type}/{name}", float("nan"))
            lines.append(
                f" {title:<18} {short} @[ IoU={iou:<9} | area={area:>6s} | "
                f"maxDets={max_dets:>3d} ] = {value:0.3f}"
            )
    return "\n".join(lines)
