"""One evaluator per metric, as detectron2's ``DatasetEvaluator`` (thesis section 2.3).

The evaluation loop (:func:`msvision.train.evaluate.evaluate_detector`) gathers every
global batch to the host with each image once, post-processes the detector's output
once (:class:`EvalPostProcess`) and hands ``(inputs, outputs)`` to every evaluator's
:meth:`~DatasetEvaluator.process`; after the last batch each
:meth:`~DatasetEvaluator.evaluate` returns its metrics, and :class:`DatasetEvaluators`
runs a list of them and merges the results. Each evaluator wraps an existing
implementation of its metric:

- :class:`BoxAPEvaluator`: ``bbox/AP``, … (pycocotools through
  :class:`~msvision.evaluation.coco_eval.CocoEvaluator`);
- :class:`MaskAPEvaluator`: ``segm/AP``, … of the masks pasted at the original size;
- :class:`BoundaryAPEvaluator`: ``boundary/AP``, … (:mod:`~msvision.evaluation.coco_boundary`);
- :class:`BoxAsMaskAPEvaluator`: ``box_as_mask/AP``, …, the predicted boxes filled as masks;
- :class:`PanopticQualityEvaluator`: ``panoptic/PQ``, ``SQ``, ``RQ``, ``n`` and the same
  with ``_th`` / ``_st`` (:class:`~msvision.evaluation.panoptic.PanopticQuality`);
- :class:`LvisAPEvaluator`: AP* / AP^B*, ``lvis_segm/AP``, … / ``lvis_boundary/AP``, …
  (:mod:`~msvision.evaluation.lvis_eval`).

The AP keys are :data:`~msvision.evaluation.coco_eval.METRIC_NAMES` (``AP``, ``AP50``,
``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``).
Files and pictures written during evaluation have the same interface and return no
metric (:mod:`msvision.evaluation.eval_writers`).

Every image is processed at most once: the loop sets ``inputs.image_ids`` to ``-1`` for
padding samples and for images met before, and every evaluator skips those.

An evaluator that processed no image raises :class:`NoImagesError` from ``evaluate()``:
a metric over no image is undefined, and a 0 would read as a model that found nothing.
Images processed without a single detection among them score 0 (CocoEvaluator's rule,
with a warning).
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from msvision.evaluation import coco_eval
from msvision.evaluation import panoptic as panoptic_metric
from msvision.evaluation.boundary import DILATION_RATIO
from msvision.evaluation.lvis_eval import evaluate_lvis
from msvision.evaluation.masks import detection_box_masks, detection_image_masks
from msvision.evaluation.panoptic_postprocess import PanopticPostProcess
from msvision.evaluation.panoptic_predictions import PanopticGroundTruth, panoptic_segmentation
from msvision.structures import Detections

# A COCO instances ground truth: a JSON path, a ``pycocotools.coco.COCO``, or a function of
# the evaluated image ids (a frozenset) returning one (a panoptic split's segments as instances).
InstancesGroundTruth = Any


class NoImagesError(ValueError):
    """``evaluate()`` of an evaluator that processed no image."""


@dataclasses.dataclass(frozen=True)
class EvalInputs:
    """One global batch's inputs on the host (numpy), each image at most once.

    Attributes:
      image_ids: ``[B] int`` dataset image ids; ``-1`` for a padding sample or an image
        already met (earlier in this batch or in an earlier one): skipped by every evaluator.
      image_sizes: ``[B, 2] int`` ``(h, w)`` of each image at the network input.
      orig_sizes: ``[B, 2] int`` ``(h, w)`` of each image as stored.
    """

    image_ids: np.ndarray
    image_sizes: np.ndarray
    orig_sizes: np.ndarray

    def evaluated_images(self) -> list[tuple[int, int]]:
        """``(index in the batch, image id)`` of the images to evaluate (``image_id >= 0``)."""
        ids = np.asarray(self.image_ids).reshape(-1)
        return [(i, int(image_id)) for i, image_id in enumerate(ids.tolist()) if image_id >= 0]


@dataclasses.dataclass(frozen=True)
class EvalOutputs:
    """The detector's predictions for one global batch, post-processed on the host once
    for every evaluator (:class:`EvalPostProcess`).

    Attributes:
      detections: numpy ``Detections`` ``[B, K, …]``; ``boxes`` and ``mask_boxes`` in
        pixels of the original images (``Detector.predict``).
      instances: COCO result dicts (``image_id``, the dataset's ``category_id``, ``bbox``
        ``[x, y, w, h]``, ``score``; with masks an RLE ``segmentation``) of the valid
        detections of the images to evaluate.
      image_masks: per image ``[K, h0, w0] bool``: the detections' masks pasted at the
        original size (invalid detections empty); None without a segmentation head.
      panoptic: per image ``(ids [h0, w0] int32, segments_info)``, the panoptic
        segmentation (None for skipped images); None on a non-panoptic dataset.
    """

    detections: Detections
    instances: list[dict]
    image_masks: Optional[list[np.ndarray]] = None
    panoptic: Optional[list[Optional[tuple[np.ndarray, list[dict]]]]] = None


class EvalPostProcess:
    """Turns the gathered ``Detections`` of a global batch into :class:`EvalOutputs`.

    Args:
      label_to_category: ``[num_classes]`` the dataset's category id of each contiguous label.
      panoptic: the panoptic post-processing (``eval.panoptic``) on a panoptic dataset, else None.
      label_is_thing: ``[num_classes]`` bool, with ``panoptic``
        (:meth:`PanopticGroundTruth.label_is_thing`).
    """

    def __init__(self, label_to_category: Sequence[int], *, panoptic: Optional[PanopticPostProcess] = None,
                 label_is_thing: Optional[Sequence[bool]] = None):
        if panoptic is not None and label_is_thing is None:
            raise ValueError("panoptic post-processing needs label_is_thing")
        self.label_to_category = [int(c) for c in label_to_category]
        self.panoptic = panoptic
        self.label_is_thing = None if label_is_thing is None else [bool(t) for t in label_is_thing]

    def __call__(self, inputs: EvalInputs, detections: Detections) -> EvalOutputs:
        if self.panoptic is not None and detections.masks is None:
            raise ValueError("a panoptic dataset needs a segmentation head (model.seg_head)")
        image_masks = detection_image_masks(detections, inputs.orig_sizes)  # None without masks
        instances = coco_eval.detections_to_coco_results(detections, inputs.image_ids, self.label_to_category,
                                                         image_masks=image_masks)
        panoptic = None
        if self.panoptic is not None:
            panoptic = [None] * len(np.asarray(inputs.image_ids).reshape(-1))
            for i, _ in inputs.evaluated_images():
                v = np.asarray(detections.valid[i], bool)
                panoptic[i] = panoptic_segmentation(
                    self.panoptic, detections.masks[i][v], detections.mask_boxes[i][v], detections.scores[i][v],
                    detections.labels[i][v], inputs.image_sizes[i], inputs.orig_sizes[i],
                    label_is_thing=self.label_is_thing, label_to_category=self.label_to_category)
        return EvalOutputs(detections, instances, image_masks, panoptic)


class DatasetEvaluator(abc.ABC):
    """One metric over a dataset: :meth:`reset`, then :meth:`process` for every batch, then
    :meth:`evaluate`."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forgets every batch processed so far."""

    @abc.abstractmethod
    def process(self, inputs: EvalInputs, outputs: EvalOutputs) -> None:
        """Takes in one global batch (skipping the images with ``image_id < 0``)."""

    @abc.abstractmethod
    def evaluate(self) -> dict[str, float]:
        """The metrics over every image processed since the last :meth:`reset`
        (fractions; an output sink returns ``{}``).

        Raises:
          NoImagesError: a metric evaluator processed no image.
        """


class DatasetEvaluators(DatasetEvaluator):
    """Runs a list of evaluators as one; :meth:`evaluate` merges their metrics in list order.

    Raises:
      ValueError (from :meth:`evaluate`): two evaluators return the same key.
    """

    def __init__(self, evaluators: Iterable[DatasetEvaluator]):
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, inputs: EvalInputs, outputs: EvalOutputs) -> None:
        for evaluator in self.evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for evaluator in self.evaluators:
            result = evaluator.evaluate()
            repeated = sorted(set(result) & set(metrics))
            if repeated:
                raise ValueError(f"{type(evaluator).__name__} returns keys another evaluator returned: {repeated}")
            metrics.update(result)
        return metrics


def _require_images(evaluator: DatasetEvaluator, image_ids: set) -> None:
    if not image_ids:
        raise NoImagesError(f"{type(evaluator).__name__}: no image was processed, so there is nothing to score "
                            "(an empty or unreadable validation split?)")


class _CocoAPEvaluator(DatasetEvaluator):
    """COCO AP/AR of one IoU type with pycocotools (:class:`coco_eval.CocoEvaluator`).

    Every processed image is scored, also one without a detection (its ground truth
    counts as missed), as ``CocoEvaluator.add(..., image_ids=...)``.
    """

    iou_type: str  # "bbox" | "segm" | "boundary"
    key_prefix: str

    def __init__(self, ground_truth: InstancesGroundTruth):
        self.ground_truth = ground_truth
        self.reset()

    def reset(self) -> None:
        self._results: list[dict] = []
        self._image_ids: set[int] = set()

    def _instances(self, inputs: EvalInputs, outputs: EvalOutputs) -> list[dict]:
        return outputs.instances

    def process(self, inputs: EvalInputs, outputs: EvalOutputs) -> None:
        self._image_ids.update(image_id for _, image_id in inputs.evaluated_images())
        self._results.extend(self._instances(inputs, outputs))

    def evaluate(self) -> dict[str, float]:
        _require_images(self, self._image_ids)
        evaluator = coco_eval.CocoEvaluator(_coco_ground_truth(self.ground_truth, self._image_ids),
                                            iou_types=(self.iou_type,))
        evaluator.add(self._results, image_ids=self._image_ids)
        metrics = {f"{self.key_prefix}/{key.split('/', 1)[1]}": value for key, value in evaluator.evaluate().items()}
        print(coco_eval.format_table(metrics))
        return metrics


def _coco_ground_truth(ground_truth: InstancesGroundTruth, image_ids: set[int]):
    if callable(ground_truth):
        return ground_truth(frozenset(image_ids))
    if isinstance(ground_truth, (str, os.PathLike)):
        return coco_eval.load_coco(ground_truth)
    return ground_truth


class BoxAPEvaluator(_CocoAPEvaluator):
    """COCO box AP (``bbox/AP``, …) against a COCO instances ground truth (:data:`InstancesGroundTruth`)."""

    iou_type = "bbox"
    key_prefix = "bbox"


class _MaskAPEvaluator(_CocoAPEvaluator):
    def _instances(self, inputs: EvalInputs, outputs: EvalOutputs) -> list[dict]:
        if outputs.image_masks is None:
            raise ValueError(f"{type(self).__name__} needs masks: the detector has no segmentation head")
        return outputs.instances


class MaskAPEvaluator(_MaskAPEvaluator):
    """COCO mask AP (``segm/AP``, …) of the masks pasted at the original image size."""

    iou_type = "segm"
    key_prefix = "segm"


class BoundaryAPEvaluator(_MaskAPEvaluator):
    """Boundary AP (``boundary/AP``, …): mask AP with ``min(mask IoU, boundary IoU)``
    (:class:`~msvision.evaluation.coco_boundary.BoundaryCOCOeval`)."""

    iou_type = "boundary"
    key_prefix = "boundary"


class BoxAsMaskAPEvaluator(_CocoAPEvaluator):
    """Mask AP of the predicted boxes filled as masks (``box_as_mask/AP``, …): the trivial
    baseline a mask head has to beat."""

    iou_type = "segm"
    key_prefix = "box_as_mask"

    def __init__(self, ground_truth: InstancesGroundTruth, label_to_category: Sequence[int]):
        super().__init__(ground_truth)
        self.label_to_category = [int(c) for c in label_to_category]

    def _instances(self, inputs: EvalInputs, outputs: EvalOutputs) -> list[dict]:
        return coco_eval.detections_to_coco_results(
            outputs.detections, inputs.image_ids, self.label_to_category,
            image_masks=detection_box_masks(outputs.detections, inputs.orig_sizes))


class PanopticQualityEvaluator(DatasetEvaluator):
    """PQ, SQ, RQ over all / thing / stuff categories (``panoptic/PQ``, …, ``panoptic/n_st``,
    fractions; the segment counts ``panoptic/TP``, ``panoptic/FP_th``, …) of
    ``outputs.panoptic`` against a COCO panoptic split
    (:class:`~msvision.evaluation.panoptic.PanopticQuality`, panopticapi's rules).
    An image without ground truth is written but not scored."""

    def __init__(self, ground_truth: PanopticGroundTruth):
        self.ground_truth = ground_truth
        self.reset()

    def reset(self) -> None:
        self._pq = panoptic_metric.PanopticQuality(self.ground_truth.categories)
        self._image_ids: set[int] = set()

    def process(self, inputs: EvalInputs, outputs: EvalOutputs) -> None:
        if outputs.panoptic is None:
            raise ValueError("PanopticQualityEvaluator needs panoptic outputs (EvalPostProcess(panoptic=...))")
        for i, image_id in inputs.evaluated_images():
            self._image_ids.add(image_id)
            gt = self.ground_truth.by_image.get(image_id)
            if gt is None:
                continue
            ids, segments = outputs.panoptic[i]
            self._pq.add(self.ground_truth.id_map(image_id), gt["segments_info"], ids, segments, image_id=image_id)

    def evaluate(self) -> dict[str, float]:
        _require_images(self, self._image_ids)
        summary = self._pq.summary()
        print(f"Panoptic quality ({self._pq.num_images} images):")
        print(panoptic_metric.format_table(summary))
        return {f"panoptic/{k}": float(v) for k, v in summary.items()}


class LvisAPEvaluator(DatasetEvaluator):
    """Mask AP with LVIS's rules against LVIS-style ground truth (e.g. cocofied LVIS v0.5 val):
    AP* (``iou_type='segm'``, keys ``lvis_segm/AP``, …) or AP^B* (``'boundary'``,
    ``lvis_boundary/AP``, …), :func:`~msvision.evaluation.lvis_eval.evaluate_lvis`.

    The ground truth is restricted to the images processed. Keys: ``AP``, ``AP50``,
    ``AP75``, ``APs``, ``APm``, ``APl``, ``APr``, ``APc``, ``APf``, ``AR@<max_dets>``,
    ``ARs@…``, ``ARm@…``, ``ARl@…``. ``eval.lvis_annotations`` adds it to a run's evaluation;
    ``python -m msvision.evaluation.lvis eval`` scores a ``results_<step>.json`` the same way.

    Args:
      ground_truth: path or dict (``images``, ``annotations``, ``categories``).
      iou_type: ``'segm'`` or ``'boundary'``.
      max_dets: detections kept per image (LVIS: 300).
    """

    def __init__(self, ground_truth, *, iou_type: str = "segm", max_dets: int = 300,
                 dilation_ratio: float = DILATION_RATIO):
        if iou_type not in ("segm", "boundary"):
            raise ValueError(f"iou_type must be 'segm' or 'boundary', got {iou_type!r}")
        if isinstance(ground_truth, (str, os.PathLike)):
            from msvision.cli import read_json

            ground_truth = read_json(ground_truth, "LVIS ground truth")
        self.ground_truth = ground_truth
        self.iou_type, self.max_dets, self.dilation_ratio = iou_type, max_dets, dilation_ratio
        self.reset()

    def reset(self) -> None:
        self._results: list[dict] = []
        self._image_ids: set[int] = set()

    def process(self, inputs: EvalInputs, outputs: EvalOutputs) -> None:
        if outputs.image_masks is None:
            raise ValueError("LvisAPEvaluator needs masks: the detector has no segmentation head")
        self._image_ids.update(image_id for _, image_id in inputs.evaluated_images())
        self._results.extend(outputs.instances)

    def evaluate(self) -> dict[str, float]:
        _require_images(self, self._image_ids)
        gt = self.ground_truth
        gt = dict(gt, images=[im for im in gt["images"] if int(im["id"]) in self._image_ids],
                  annotations=[a for a in gt["annotations"] if int(a["image_id"]) in self._image_ids])
        summary = evaluate_lvis(gt, self._results, iou_type=self.iou_type, max_dets=self.max_dets,
                                dilation_ratio=self.dilation_ratio)
        return {f"lvis_{self.iou_type}/{k}": float(v) for k, v in summary.items()}
