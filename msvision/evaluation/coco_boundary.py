"""COCO-style Boundary AP: pycocotools' rules with the AP^B* IoU (thesis §2.3).

:class:`BoundaryCOCOeval` is pycocotools' ``COCOeval`` (``iouType="segm"``: area
ranges, 100 detections, crowd handling, 101-point interpolation) with the IoU of
every detection–ground-truth pair replaced by ``min(mask IoU, boundary IoU)``
(mask IoU alone for crowd ground truth), as boundary-iou-api's COCO evaluation.
Use it on COCO-format data that has no LVIS annotations (synthetic data, the
chapter 5 baselines); the thesis's AP^B* itself is the LVIS variant in
:mod:`msvision.evaluation.lvis_eval`.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Iterable, Optional

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from msvision.evaluation.boundary import DILATION_RATIO, boundary_iou_matrix

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class BoundaryCOCOeval(COCOeval):
    """``COCOeval(gt, dt, "segm")`` whose ``computeIoU`` is the Boundary-AP IoU."""

    def __init__(self, coco_gt, coco_dt, dilation_ratio: float = DILATION_RATIO):
        super().__init__(coco_gt, coco_dt, "segm")
        self.dilation_ratio = dilation_ratio

    def computeIoU(self, imgId, catId):  # noqa: N802,N803 (pycocotools' names)
        p = self.params
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if len(gt) == 0 or len(dt) == 0:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        # _prepare has already turned every segmentation into an RLE.
        # Pairs under the lowest threshold cannot match whatever their boundary IoU.
        return boundary_iou_matrix(
            [d["segmentation"] for d in dt],
            [g["segmentation"] for g in gt],
            [int(g["iscrowd"]) for g in gt],
            self.dilation_ratio,
            min_iou=float(min(p.iouThrs)),
        )


def coco_boundary_ap(
    coco_gt,
    results: Iterable[dict],
    *,
    image_ids: Optional[Iterable[int]] = None,
    dilation_ratio: float = DILATION_RATIO,
) -> dict[str, float]:
    """Boundary AP with pycocotools' COCO rules.

    Args:
      coco_gt: a ``pycocotools.coco.COCO`` or a COCO instances dict.
      results: COCO result dicts with an RLE ``segmentation`` and a ``score``.
      image_ids: images to evaluate (default: all images of ``coco_gt``).
      dilation_ratio: boundary width as a fraction of the image diagonal.

    Returns:
      ``{"AP", "AP50", ..., "ARl"}`` fractions (pycocotools' 12 numbers; ``-1`` where
      no ground truth exists).
    """
    if not isinstance(coco_gt, COCO):
        dataset = coco_gt
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dataset)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt.createIndex()
    results = [r for r in results if "segmentation" in r]
    if not results:
        return {name: 0.0 for name in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = BoundaryCOCOeval(coco_gt, coco_dt, dilation_ratio)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}
