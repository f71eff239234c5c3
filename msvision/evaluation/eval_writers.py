"""Files and pictures written during evaluation, apart from the scoring.

Each has the interface of an evaluator
(:class:`~msvision.evaluation.evaluators.DatasetEvaluator`): ``process(inputs, outputs)``
for every global batch, ``evaluate()`` to finish; they return no metric (``{}``), so the
evaluation loop runs them in the same list as the metrics.

- :class:`CocoResultsWriter`: the COCO results JSON (``results_<step>.json``).
- :class:`PanopticPredictionFiles`: COCO panoptic predictions, a PNG per image and a JSON.
- :class:`DetectionPictures`, :class:`PanopticPictures`: the first images with their
  predictions and ground truth (``vis_<step>/<image_id>.png``).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from msvision.evaluation import coco_eval, visualize
from msvision.evaluation.evaluators import DatasetEvaluator, EvalInputs, EvalOutputs
from msvision.evaluation.panoptic import id_to_rgb
from msvision.evaluation.panoptic_predictions import PanopticGroundTruth


class CocoResultsWriter(DatasetEvaluator):
    """Writes every image's COCO results (``outputs.instances``) to ``path`` on :meth:`evaluate`
    (:func:`~msvision.evaluation.coco_eval.write_results_json`, the evaluation server's format)."""

    def __init__(self, path: str):
        self.path = path
        self.reset()

    def reset(self) -> None:
        self._results: list[dict] = []

    def process(self, inputs: EvalInputs, outputs: EvalOutputs) -> None:
        self._results.extend(outputs.instances)

    def evaluate(self) -> dict[str, float]:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        coco_eval.write_results_json(self.path, self._results)
        return {}


class PanopticPredictionFiles(DatasetEvaluator):
    """COCO panoptic predictions: a PNG per image (segment id = R + 256·G + 256²·B, named as
    the ground truth's PNG, else ``<image_id>.png``) under ``out_dir`` as it is processed, and
    on :meth:`evaluate` ``out_dir + '.json'`` with every image's ``segments_info`` and the
    ground truth's categories (the input of ``python -m msvision.evaluation.panoptic``)."""

    def __init__(self, out_dir: str, ground_truth: PanopticGroundTruth):
        self.out_dir = out_dir
        self.ground_truth = ground_truth
        self.reset()

    def reset(self) -> None:
        self._annotations: list[dict] = []

    def process(self, inputs: EvalInputs, outputs: EvalOutputs) -> None:
        if outputs.panoptic is None:
            raise ValueError("PanopticPredictionFiles needs panoptic outputs (EvalPostProcess(panoptic=...))")
        for i, image_id in inputs.evaluated_images():
            ids, segments = outputs.panoptic[i]
            gt = self.ground_truth.by_image.get(image_id)
            file_name = gt["file_name"] if gt is not None else f"{image_id}.png"
            os.makedirs(self.out_dir, exist_ok=True)
            Image.fromarray(id_to_rgb(ids)).save(os.path.join(self.out_dir, file_name))
            self._annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})

    def evaluate(self) -> dict[str, float]:
        with open(self.out_dir.rstrip("/") + ".json", "w") as f:
            json.dump({"annotations": self._annotations, "categories": self.ground_truth.categories}, f)
        return {}


class DetectionPictures(DatasetEvaluator):
    """The first ``count`` images (original resolution) with their predicted boxes (solid;
    masks blended when the detector has them) and ground-truth boxes (dashed), as
    ``out_dir/<image_id>.png`` (:func:`~msvision.evaluation.visualize.draw_detections`).

    Args:
      load_image: ``image_id -> [H, W, 3] uint8`` the original image.
      load_ground_truth: ``image_id -> (boxes [G, 4], labels [G])`` at the original size.
      class_names: indexed by contiguous label.
    """

    def __init__(self, out_dir: str, count: int, *, load_image: Callable[[int], np.ndarray],
                 load_ground_truth: Callable[[int], tuple[np.ndarray, np.ndarray]], class_names: Sequence[str]):
        self.out_dir, self.count = out_dir, count
        self.load_image, self.load_ground_truth = load_image, load_ground_truth
        self.class_names = class_names
        self.reset()

    def reset(self) -> None:
        self.drawn = 0

    def process(self, inputs: EvalInputs, outputs: EvalOutputs) -> None:
        dets = outputs.detections
        for i, image_id in inputs.evaluated_images():
            if self.drawn >= self.count:
                return
            valid = np.asarray(dets.valid[i], bool)
            gt_boxes, gt_labels = self.load_ground_truth(image_id)
            picture = visualize.draw_detections(
                self.load_image(image_id), dets.boxes[i][valid], dets.labels[i][valid], dets.scores[i][valid],
                self.class_names, gt_boxes=gt_boxes, gt_labels=gt_labels,
                masks=None if outputs.image_masks is None else outputs.image_masks[i][valid])
            os.makedirs(self.out_dir, exist_ok=True)
            picture.save(os.path.join(self.out_dir, f"{image_id}.png"))
            self.drawn += 1

    def evaluate(self) -> dict[str, float]:
        return {}


class PanopticPictures(DatasetEvaluator):
    """The first ``count`` images with their panoptic prediction (left) beside the ground
    truth (right, when the split has it), as ``out_dir/<image_id>.png``
    (:func:`~msvision.evaluation.visualize.draw_panoptic`).

    Args:
      load_image: ``image_id -> [H, W, 3] uint8`` the original image.
      class_names, label_to_category: ``[num_classes]`` name and dataset category id of each label.
    """

    def __init__(self, out_dir: str, count: int, ground_truth: PanopticGroundTruth, *,
                 load_image: Callable[[int], np.ndarray], class_names: Sequence[str],
                 label_to_category: Sequence[int]):
        self.out_dir, self.count = out_dir, count
        self.ground_truth = ground_truth
        self.load_image = load_image
        self.names = dict(zip(label_to_category, class_names))
        self.labels = {c: k for k, c in enumerate(label_to_category)}
        self.reset()

    def reset(self) -> None:
        self.drawn = 0

    def process(self, inputs: EvalInputs, outputs: EvalOutputs) -> None:
        if outputs.panoptic is None:
            raise ValueError("PanopticPictures needs panoptic outputs (EvalPostProcess(panoptic=...))")
        isthing = {c: int(t) for c, t in self.ground_truth.isthing().items()}
        for i, image_id in inputs.evaluated_images():
            if self.drawn >= self.count:
                return
            image = self.load_image(image_id)
            ids, segments = outputs.panoptic[i]
            pictures = [visualize.draw_panoptic(image, ids, segments, self.names, category_labels=self.labels)]
            gt = self.ground_truth.by_image.get(image_id)
            if gt is not None:
                gt_segments = [dict(s, isthing=isthing.get(int(s["category_id"]), 1)) for s in gt["segments_info"]]
                pictures.append(visualize.draw_panoptic(image, self.ground_truth.id_map(image_id), gt_segments,
                                                        self.names, category_labels=self.labels))
            os.makedirs(self.out_dir, exist_ok=True)
            visualize.save_grid(pictures, os.path.join(self.out_dir, f"{image_id}.png"), num_columns=2)
            self.drawn += 1

    def evaluate(self) -> dict[str, float]:
        return {}
