"""LVIS-rule mask AP: AP* and AP^B* (thesis section 2.3).

The author's evaluation runs ``LVISEval`` too (DetSeg ``datasets/coco/coco.py``,
``CocoEvaluator.evaluate``).

AP* is mask AP of COCO-category predictions against the LVIS v0.5 annotations of
the COCO val images ("cocofied", :func:`msvision.evaluation.lvis.cocofy_lvis`),
computed with LVIS's evaluation rules (``lvis`` 0.5.3 ``LVISEval``); AP^B* is the
same with the Boundary IoU of boundary-iou-api (``iou_type="boundary"``).

The rules, from LVISEval:

- at most ``max_dets`` (300) detections per image, the highest-scored;
- federated filtering: a detection is evaluated only if its category is in the
  image's ground truth or in its ``neg_category_ids`` (when the images carry
  that key; otherwise every detection counts, as for COCO);
- an unmatched detection of a category in the image's
  ``not_exhaustive_category_ids`` is ignored (neither TP nor FP);
- ground truth and detections with ``area <= 0`` are dropped; the ground-truth area
  is the annotation's ``area`` field; a detection's area is its box area ``w·h`` when
  the results carry boxes (LVISResults checks the first result) and its mask area
  otherwise;
- area ranges all / small / medium / large = ``[0, 1e10]``, ``[0, 32²]``,
  ``[32², 96²]``, ``[96², 1e10]``, bounds inclusive on both sides;
- greedy matching per image and category at IoU thresholds 0.50:0.05:0.95 in score
  order, as pycocotools; precision made monotone and read at 101 recall points;
  AP = mean over (threshold, recall point, category) of the defined entries.

Crowd ground truth (LVIS has none) is handled as in boundary-iou-api: ignored,
matched with crowd IoU, never consumed, mask IoU only under AP^B*.
Everything is numpy + pycocotools' RLE routines; the matching loop runs once per
detection, vectorised over the 4 area ranges × 10 thresholds.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from msvision.evaluation.boundary import DILATION_RATIO, boundary_iou_matrix

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = (("all", 0.0, 1e5**2), ("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, 1e5**2))
FREQUENCY_GROUPS = ("r", "c", "f")  # rare / common / frequent (LVIS ``frequency``)
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def _load_json(obj, what: str = ""):
    if isinstance(obj, (str, os.PathLike)):
        from msvision.cli import read_json

        return read_json(obj, what)
    return obj


def annotation_to_rle(segmentation, height: int, width: int) -> dict:
    """COCO segmentation (polygons, uncompressed or compressed RLE) → compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: merge all parts into one mask
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


class _Pair:
    """Ground truth and (score-sorted) detections of one (image, category)."""

    __slots__ = ("gt", "dt")

    def __init__(self):
        self.gt: list[dict] = []
        self.dt: list[dict] = []


def _match(
    ious: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of score-sorted detections, all area ranges and thresholds at once.

    The rule of pycocotools/LVISEval: each detection in turn takes, among the
    ground truth still free (crowd is never used up) with IoU ≥ threshold, the one
    of highest IoU (the last such in annotation order on ties), preferring
    non-ignored ground truth; matching an ignored one makes the detection ignored.

    Args:
      ious: ``[D, G]`` float64, detections sorted by decreasing score.
      gt_ignore: ``[A, G]`` bool, ignored ground truth per area range.
      crowd: ``[G]`` bool.

    Returns:
      ``matched [A, T, D]`` bool and ``matched_ignored [A, T, D]`` bool.
    """
    num_dt, num_gt = ious.shape
    num_area = gt_ignore.shape[0]
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None]  # [1, T, 1]
    matched = np.zeros((num_area, len(IOU_THRESHOLDS), num_dt), bool)
    matched_ignored = np.zeros_like(matched)
    if num_dt == 0 or num_gt == 0:
        return matched, matched_ignored
    taken = np.zeros((num_area, len(IOU_THRESHOLDS), num_gt), bool)
    ignored = gt_ignore[:, None, :]  # [A, 1, G]
    reverse = slice(None, None, -1)
    area_index = np.arange(num_area)[:, None]
    thr_index = np.arange(len(IOU_THRESHOLDS))[None, :]
    for d in range(num_dt):
        row = ious[d]
        ok = ~taken & (row >= thresholds)  # [A, T, G]
        regular = ok & ~ignored
        candidates = np.where(regular.any(-1, keepdims=True), regular, ok & ignored)
        hit = candidates.any(-1)  # [A, T]
        if not hit.any():
            continue
        values = np.where(candidates, row, -1.0)
        best = num_gt - 1 - np.argmax(values[..., reverse], axis=-1)  # last argmax, [A, T]
        matched[..., d] = hit
        matched_ignored[..., d] = hit & gt_ignore[area_index, best]
        use_up = hit & ~crowd[best]
        taken[area_index, thr_index, best] |= use_up
    return matched, matched_ignored


class LvisEvaluation:
    """LVIS-rule evaluation of COCO-format instance segmentation results.

    Args:
      gt: LVIS-style ground truth (path or dict): ``images`` (with ``height``,
        ``width`` and optionally ``neg_category_ids``,
        ``not_exhaustive_category_ids``), ``annotations`` (``segmentation``,
        ``area``, ``category_id``, ``image_id``, ``id``), ``categories``.
      results: COCO result dicts (path or list): ``image_id``, ``category_id``,
        ``score``, ``segmentation`` (RLE or polygons) and optionally ``bbox``
        ``[x, y, w, h]``.
      iou_type: ``"segm"`` (AP*) or ``"boundary"`` (AP^B*).
      max_dets: detections kept per image (LVIS: 300).
      dilation_ratio: boundary width for ``"boundary"``, fraction of the diagonal.
    """

    def __init__(
        self,
        gt,
        results,
        *,
        iou_type: str = "segm",
        max_dets: int = 300,
        dilation_ratio: float = DILATION_RATIO,
    ):
        if iou_type not in ("segm", "boundary"):
            raise ValueError(f"iou_type must be 'segm' or 'boundary', got {iou_type!r}")
        self.iou_type = iou_type
        self.max_dets = max_dets
        self.dilation_ratio = dilation_ratio
        if isinstance(gt, (str, os.PathLike)):
            from msvision.cli import check_records

            name, gt = gt, _load_json(gt, "LVIS ground truth")
            check_records(gt, "images", ("id", "height", "width"), name)
            check_records(gt, "annotations", ("image_id", "category_id", "segmentation"), name)
            check_records(gt, "categories", ("id",), name)
        if isinstance(results, (str, os.PathLike)):
            from msvision.cli import check_record_list

            name, results = results, _load_json(results, "COCO results")
            check_record_list(results, "the results", ("image_id", "category_id", "segmentation", "score"), name)
        results = list(results)
        self.images = {img["id"]: img for img in gt["images"]}
        self.image_ids = sorted(self.images)
        self.categories = {cat["id"]: cat for cat in gt["categories"]}
        self.category_ids = sorted(self.categories)
        self.pairs = self._prepare(gt["annotations"], results)
        self.precision: Optional[np.ndarray] = None  # [T, R, K, A]
        self.recall: Optional[np.ndarray] = None  # [T, K, A]

    # -- preparation -------------------------------------------------------
    def _image_rle(self, segmentation, image_id: int) -> dict:
        img = self.images[image_id]
        return annotation_to_rle(segmentation, img["height"], img["width"])

    def _limit_detections(self, results: list[dict]) -> list[dict]:
        """LVISResults.limit_dets_per_image: per image (first-seen order) the top
        ``max_dets`` by score, stable; images within the limit keep their order."""
        per_image: dict[int, list[dict]] = defaultdict(list)
        for r in results:
            per_image[r["image_id"]].append(r)
        out = []
        for dets in per_image.values():
            if self.max_dets >= 0 and len(dets) > self.max_dets:
                dets = sorted(dets, key=lambda r: r["score"], reverse=True)[: self.max_dets]
            out.extend(dets)
        return out

    def _prepare(self, annotations: Sequence[dict], results: list[dict]) -> dict[tuple[int, int], _Pair]:
        from pycocotools import mask as mask_utils

        unknown = {r["image_id"] for r in results} - set(self.images)
        if unknown:
            raise ValueError(f"results for images not in the ground truth: {sorted(unknown)[:10]}")
        pairs: dict[tuple[int, int], _Pair] = defaultdict(_Pair)
        positive = defaultdict(set)
        for ann in annotations:
            if ann["image_id"] not in self.images or ann["category_id"] not in self.categories:
                continue
            if not ann["area"] > 0:
                continue
            gt = {
                "id": ann["id"],
                "area": float(ann["area"]),
                "crowd": bool(ann.get("iscrowd", 0)),
                "ignore": bool(ann.get("ignore", 0) or ann.get("iscrowd", 0)),
                "rle": self._image_rle(ann["segmentation"], ann["image_id"]),
            }
            pairs[ann["image_id"], ann["category_id"]].gt.append(gt)
            positive[ann["image_id"]].add(ann["category_id"])

        results = self._limit_detections(results)
        federated = bool(self.images) and "neg_category_ids" in self.images[self.image_ids[0]]
        negative = {i: set(img.get("neg_category_ids", ())) for i, img in self.images.items()}
        box_area = bool(results) and "bbox" in results[0]
        for r in results:
            image_id, category_id = r["image_id"], r["category_id"]
            if category_id not in self.categories:
                continue
            if "segmentation" in r:
                rle = self._image_rle(r["segmentation"], image_id)
            else:  # LVISResults: a box-only result is evaluated as its box polygon
                x, y, w, h = r["bbox"]
                rle = self._image_rle([[x, y, x, y + h, x + w, y + h, x + w, y]], image_id)
            if box_area:
                area = float(r["bbox"][2] * r["bbox"][3])
            else:
                area = float(mask_utils.area(rle))
            if not area > 0:
                continue
            if federated and category_id not in negative[image_id] and category_id not in positive[image_id]:
                continue
            pairs[image_id, category_id].dt.append({"score": float(r["score"]), "area": area, "rle": rle})
        for pair in pairs.values():
            order = np.argsort([-d["score"] for d in pair.dt], kind="mergesort")
            pair.dt = [pair.dt[i] for i in order]
        return pairs

    # -- evaluation --------------------------------------------------------
    def _ious(self, pair: _Pair) -> np.ndarray:
        from pycocotools import mask as mask_utils

        if not pair.gt or not pair.dt:
            return np.zeros((len(pair.dt), len(pair.gt)))
        dt_rles = [d["rle"] for d in pair.dt]
        gt_rles = [g["rle"] for g in pair.gt]
        crowd = [int(g["crowd"]) for g in pair.gt]
        if self.iou_type == "segm":
            return np.asarray(mask_utils.iou(dt_rles, gt_rles, crowd), np.float64)
        # Pairs under the lowest threshold cannot match whatever their boundary IoU.
        return boundary_iou_matrix(dt_rles, gt_rles, crowd, self.dilation_ratio, min_iou=IOU_THRESHOLDS[0])

    def _evaluate_pair(self, image_id: int, category_id: int, pair: _Pair):
        """Per-pair matches: ``scores [D]``, ``tp [A, T, D]``, ``fp [A, T, D]``, ``num_gt [A]``."""
        lo = np.array([a[1] for a in AREA_RANGES])[:, None]
        hi = np.array([a[2] for a in AREA_RANGES])[:, None]
        gt_area = np.array([g["area"] for g in pair.gt], np.float64)[None, :]
        gt_ignore = np.array([g["ignore"] for g in pair.gt], bool)[None, :] | (gt_area < lo) | (gt_area > hi)
        crowd = np.array([g["crowd"] for g in pair.gt], bool)
        matched, matched_ignored = _match(self._ious(pair), gt_ignore, crowd)
        dt_area = np.array([d["area"] for d in pair.dt], np.float64)[None, :]
        not_exhaustive = category_id in self.images[image_id].get("not_exhaustive_category_ids", ())
        unmatched_ignored = (dt_area < lo) | (dt_area > hi) | not_exhaustive  # [A, D]
        ignored = matched_ignored | (~matched & unmatched_ignored[:, None, :])
        scores = np.array([d["score"] for d in pair.dt], np.float64)
        num_gt = (~gt_ignore).sum(-1)
        return scores, matched & ~ignored, ~matched & ~ignored, num_gt

    def evaluate(self) -> dict[str, float]:
        """Match, accumulate and summarise; returns :meth:`summary`."""
        num_t, num_r, num_a = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES)
        num_k = len(self.category_ids)
        self.precision = -np.ones((num_t, num_r, num_k, num_a))
        self.recall = -np.ones((num_t, num_k, num_a))
        by_category: dict[int, list[tuple[int, int, _Pair]]] = defaultdict(list)
        for (image_id, category_id), pair in self.pairs.items():
            if pair.gt or pair.dt:
                by_category[category_id].append((image_id, category_id, pair))
        for k, category_id in enumerate(self.category_ids):
            entries = sorted(by_category.get(category_id, []), key=lambda e: e[0])  # image order
            if not entries:
                continue
            evaluated = [self._evaluate_pair(*e) for e in entries]
            scores = np.concatenate([e[0] for e in evaluated])
            order = np.argsort(-scores, kind="mergesort")
            tps = np.concatenate([e[1] for e in evaluated], axis=-1)[..., order]  # [A, T, N]
            fps = np.concatenate([e[2] for e in evaluated], axis=-1)[..., order]
            num_gt = np.sum([e[3] for e in evaluated], axis=0)  # [A]
            self._accumulate(k, tps, fps, num_gt)
        return self.summary()

    def _accumulate(self, k: int, tps: np.ndarray, fps: np.ndarray, num_gt: np.ndarray) -> None:
        """LVISEval.accumulate for one category: ``tps``/``fps`` ``[A, T, N]`` in score order."""
        tp_sum = np.cumsum(tps, axis=-1, dtype=np.float64)
        fp_sum = np.cumsum(fps, axis=-1, dtype=np.float64)
        num_dt = tps.shape[-1]
        for a in range(len(AREA_RANGES)):
            if num_gt[a] == 0:
                continue
            for t in range(len(IOU_THRESHOLDS)):
                tp, fp = tp_sum[a, t], fp_sum[a, t]
                rc = tp / num_gt[a]
                self.recall[t, k, a] = rc[-1] if num_dt else 0.0
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope
                # precision at the first detection reaching each recall point; 0 past the end
                idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
                at_recall = np.zeros(len(RECALL_THRESHOLDS))
                inside = idx < num_dt
                at_recall[inside] = pr[idx[inside]]
                self.precision[t, :, k, a] = at_recall

    # -- summary -----------------------------------------------------------
    def _mean(self, values: np.ndarray) -> float:
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    def summary(self) -> dict[str, float]:
        """``AP, AP50, AP75, APs, APm, APl, APr, APc, APf`` and ``AR@N, ARs@N, ARm@N, ARl@N``
        (fractions; ``-1`` when nothing defines a value)."""
        if self.precision is None:
            raise RuntimeError("call evaluate() first")
        p, r = self.precision, self.recall
        out = {
            "AP": self._mean(p[..., 0]),
            "AP50": self._mean(p[0, :, :, 0]),
            "AP75": self._mean(p[5, :, :, 0]),
            "APs": self._mean(p[..., 1]),
            "APm": self._mean(p[..., 2]),
            "APl": self._mean(p[..., 3]),
        }
        frequency = [self.categories[c].get("frequency") for c in self.category_ids]
        for group in FREQUENCY_GROUPS:
            members = [k for k, f in enumerate(frequency) if f == group]
            out[f"AP{group}"] = self._mean(p[:, :, members, 0])
        for name, a in (("", 0), ("s", 1), ("m", 2), ("l", 3)):
            out[f"AR{name}@{self.max_dets}"] = self._mean(r[:, :, a])
        return out


def evaluate_lvis(
    gt: Union[str, os.PathLike, dict],
    results: Union[str, os.PathLike, Iterable[dict]],
    *,
    iou_type: str = "segm",
    max_dets: int = 300,
    dilation_ratio: float = DILATION_RATIO,
) -> dict[str, float]:
    """AP* (``iou_type="segm"``) or AP^B* (``"boundary"``) of ``results`` against ``gt``.

    See :class:`LvisEvaluation` for the argument formats and the rules.
    """
    evaluation = LvisEvaluation(
        gt, results, iou_type=iou_type, max_dets=max_dets, dilation_ratio=dilation_ratio
    )
    return evaluation.evaluate()
