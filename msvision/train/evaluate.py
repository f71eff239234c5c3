"""Inference over the validation split and its evaluation.

:func:`evaluate_detector` is a short loop: for every global batch it runs the model,
gathers inputs and predictions to the host with each image once
(:func:`gather_global_batch`), post-processes them once
(:class:`~msvision.evaluation.evaluators.EvalPostProcess`: masks pasted at the original
size, COCO results, panoptic segmentation) and hands them to every evaluator of
:func:`build_evaluators`; then it merges the evaluators' metrics
(:mod:`msvision.evaluation.evaluators`; files and pictures:
:mod:`msvision.evaluation.eval_writers`).

Writes, under ``WORKDIR/eval/``: ``results_<step>.json`` (COCO results format,
the dataset's own category ids), ``metrics_<step>.json`` (``bbox/AP``,
``bbox/AP50``, …, ``num_images``: images evaluated; with a segmentation head also
``segm/AP``, … from masks pasted at the original image size,
:mod:`msvision.evaluation.masks`, and with ``eval.box_mask_baseline``
``box_as_mask/AP``, …: the mask metrics of the predicted boxes filled as masks, the
trivial baseline of a mask head; with ``eval.boundary_ap`` ``boundary/AP``, …: mask AP
with the Boundary IoU, :mod:`msvision.evaluation.coco_boundary`; with ``eval.lvis_annotations``
``lvis_segm/AP``, … (AP*) and with ``eval.boundary_ap`` also ``lvis_boundary/AP``, … (AP^B*):
LVIS's rules against that ground truth, :mod:`msvision.evaluation.lvis_eval`) and, when asked,
``vis_<step>/*.png`` with predicted boxes (solid, masks blended) and ground truth (dashed).

A panoptic dataset (``data.source='coco_panoptic'``) also gets the panoptic
post-processing of every image (``eval.panoptic``,
:mod:`msvision.evaluation.panoptic_postprocess`): the COCO panoptic predictions
``panoptic_<step>/*.png`` + ``panoptic_<step>.json`` and ``panoptic/PQ``, ``SQ``, ``RQ``,
``PQ_th``, …, ``PQ_st`` (fractions) in the metrics; its ``bbox``/``segm`` AP is
computed against every segment as an instance (things and stuff,
:func:`~msvision.evaluation.panoptic_predictions.panoptic_to_coco_instances`), and the
pictures show the panoptic prediction beside the ground truth.

Several processes: each reads its share of every global batch, the predictions are
gathered to every process, and process 0 alone runs the evaluators and writes the files
(the others return ``{}``). Each image is evaluated exactly once: padding samples and
repeats (an unreadable image replaced by the next readable one) are dropped,
``num_images`` counts the distinct images.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Callable, Mapping, Optional

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from msvision.cli import read_json
from msvision.evaluation import coco_eval
from msvision.evaluation import evaluators as evaluators_lib
from msvision.evaluation import eval_writers
from msvision.evaluation.panoptic_postprocess import PanopticPostProcess
from msvision.evaluation.panoptic_predictions import PanopticGroundTruth, panoptic_to_coco_instances
from msvision.structures import Batch, Detections
from msvision.train import data_setup
from msvision.train import sharding as sharding_lib

log = logging.getLogger(__name__)


def evaluate_detector(
    config: ml_collections.ConfigDict,
    dataset_info,
    predict: Callable[[Batch], Detections],
    mesh,
    workdir: str,
    step: int,
    *,
    visualize_count: int = 0,
    extra_metrics: Optional[Mapping[str, float]] = None,
) -> dict[str, float]:
    """Runs ``predict`` over the whole validation split; returns ``{"eval/bbox/AP": …}``.

    ``visualize_count`` images get a PNG with their predictions and ground truth;
    ``extra_metrics`` (e.g. ``checkpoint/skipped`` from ``eval.py``) are added to the
    metrics written and returned.

    Raises:
      msvision.evaluation.evaluators.NoImagesError: no validation image could be read
        (after ``results_<step>.json`` is written, before the metrics file).
    """
    is_main = jax.process_index() == 0
    out_dir = os.path.join(workdir, "eval")
    postprocess, evaluators = (build_evaluators(config, dataset_info, out_dir, step, visualize_count=visualize_count)
                               if is_main else (None, None))
    eval_iter = data_setup.build_eval_iterator(
        dataset_info, shard_index=jax.process_index(), shard_count=jax.process_count()
    )
    seen: set[int] = set()
    num_detections = 0
    for local_batch in tqdm(eval_iter, desc="eval", disable=not is_main, dynamic_ncols=True):
        batch = sharding_lib.shard_batch(local_batch, mesh)
        inputs, detections = gather_global_batch(batch, predict(batch), seen)
        if is_main:
            outputs = postprocess(inputs, detections)
            num_detections += len(outputs.instances)
            evaluators.process(inputs, outputs)
    if len(seen) != len(dataset_info.val_source):
        log.warning("evaluated %d of the %d validation images (unreadable ones are skipped)",
                    len(seen), len(dataset_info.val_source))
    if not is_main:
        return {}
    print(f"Evaluation at step {step} ({len(seen)} images, {num_detections} detections):")
    metrics = evaluators.evaluate()
    metrics["num_images"] = float(len(seen))
    metrics.update(extra_metrics or {})
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"metrics_{step}.json"), "w") as f:
        json.dump(dict(metrics, step=step), f, indent=2)
    return {f"eval/{k}": v for k, v in metrics.items()}


def build_evaluators(config: ml_collections.ConfigDict, dataset_info, out_dir: str, step: int, *,
                     visualize_count: int = 0
                     ) -> tuple[evaluators_lib.EvalPostProcess, evaluators_lib.DatasetEvaluators]:
    """The host post-processing and the evaluators of ``config.eval`` for ``dataset_info``'s
    validation split, writing under ``out_dir`` (``WORKDIR/eval``).

    Always box AP and ``results_<step>.json``; with a segmentation head (``model.seg_head``)
    mask AP, with ``eval.boundary_ap`` Boundary AP, with ``eval.box_mask_baseline`` the
    boxes-as-masks AP and with ``eval.lvis_annotations`` AP* (and AP^B* with ``boundary_ap``); on a panoptic split (``data.source='coco_panoptic'``) PQ and the
    ``panoptic_<step>`` files, its box and mask AP against every segment as an instance;
    pictures of the first ``visualize_count`` images.
    """
    data_cfg = dataset_info.data_cfg
    label_to_category = dataset_info.classes.label_to_category
    has_masks = config.model.seg_head.name != "none"
    panoptic_gt = None
    if data_cfg.source == "coco_panoptic":
        panoptic_gt = PanopticGroundTruth.load(data_cfg.val.panoptic, data_cfg.val.panoptic_dir)
        postprocess = evaluators_lib.EvalPostProcess(
            label_to_category, panoptic=PanopticPostProcess(**config.eval.panoptic.to_dict()),
            label_is_thing=panoptic_gt.label_is_thing(label_to_category))
        # Every segment, thing or stuff, an instance (panopticapi's converter, things_only=False),
        # converted once for the evaluated images and shared by the AP evaluators.
        instances_gt = functools.lru_cache(maxsize=1)(
            lambda image_ids: panoptic_to_coco_instances(data_cfg.val.panoptic, data_cfg.val.panoptic_dir,
                                                         set(image_ids)))
    else:
        postprocess = evaluators_lib.EvalPostProcess(label_to_category)
        instances_gt = coco_eval.load_coco(dataset_info.val_annotations)

    evaluators: list[evaluators_lib.DatasetEvaluator] = [
        eval_writers.CocoResultsWriter(os.path.join(out_dir, f"results_{step}.json")),
        evaluators_lib.BoxAPEvaluator(instances_gt),
    ]
    if has_masks:
        evaluators.append(evaluators_lib.MaskAPEvaluator(instances_gt))
        if config.eval.boundary_ap:
            evaluators.append(evaluators_lib.BoundaryAPEvaluator(instances_gt))
        if config.eval.box_mask_baseline:
            evaluators.append(evaluators_lib.BoxAsMaskAPEvaluator(instances_gt, label_to_category))
        if config.eval.lvis_annotations:
            lvis_gt = read_json(config.eval.lvis_annotations, "eval.lvis_annotations")  # read once for both
            evaluators.append(evaluators_lib.LvisAPEvaluator(lvis_gt, iou_type="segm"))
            if config.eval.boundary_ap:
                evaluators.append(evaluators_lib.LvisAPEvaluator(lvis_gt, iou_type="boundary"))
    if panoptic_gt is not None:
        evaluators += [evaluators_lib.PanopticQualityEvaluator(panoptic_gt),
                       eval_writers.PanopticPredictionFiles(os.path.join(out_dir, f"panoptic_{step}"), panoptic_gt)]
    if visualize_count > 0:
        vis_dir = os.path.join(out_dir, f"vis_{step}")
        load_image = functools.partial(data_setup.load_original_image, dataset_info)
        if panoptic_gt is not None:
            evaluators.append(eval_writers.PanopticPictures(
                vis_dir, visualize_count, panoptic_gt, load_image=load_image,
                class_names=dataset_info.classes.class_names, label_to_category=label_to_category))
        else:
            evaluators.append(eval_writers.DetectionPictures(
                vis_dir, visualize_count, load_image=load_image,
                load_ground_truth=functools.partial(data_setup.original_ground_truth, dataset_info),
                class_names=dataset_info.classes.class_names))
    return postprocess, evaluators_lib.DatasetEvaluators(evaluators)


def gather_global_batch(batch: Batch, detections: Detections, seen: set[int]
                        ) -> tuple[evaluators_lib.EvalInputs, Detections]:
    """One global batch's inputs and predictions, gathered from every process and device to
    numpy on every process, with each image once.

    Every process reads its share of the global batch (process ``i`` of ``n``: images
    ``≡ i (mod n)``, ``msvision.data.pipeline``) and gets the whole of it here. The ids of
    padding samples are ``-1`` already; the ids of images in ``seen`` or earlier in the
    batch are set to ``-1`` (:func:`_first_occurrences`) and the new ones added to ``seen``.
    """
    detections, image_ids, image_sizes, orig_sizes = sharding_lib.gather_to_host(
        (detections, batch.image_ids, batch.image_sizes, batch.orig_sizes))
    inputs = evaluators_lib.EvalInputs(_first_occurrences(image_ids, seen), image_sizes, orig_sizes)
    return inputs, detections


def _first_occurrences(image_ids: np.ndarray, seen: set[int]) -> np.ndarray:
    """A global batch's image ids (``[B] int``, ``-1`` = padding) with every id already
    in ``seen`` (or earlier in the batch) replaced by ``-1``, so no image is counted
    twice; adds the new ids to ``seen``.

    Repeats only come from a source replacing an unreadable image by the next
    readable one (``msvision.data.coco``); they are logged.
    """
    ids = np.asarray(image_ids).reshape(-1).copy()
    for i, image_id in enumerate(ids):
        if image_id < 0:
            continue
        if int(image_id) in seen:
            log.warning("image %d met twice in evaluation (an unreadable image replaced by the next one?): "
                        "counted once", image_id)
            ids[i] = -1
        else:
            seen.add(int(image_id))
    return ids
