"""Inference over the validation split and COCO evaluation of the results.

Writes, under ``WORKDIR/eval/``: ``results_<step>.json`` (COCO results format,
the dataset's own category ids), ``metrics_<step>.json`` (``bbox/AP``,
``bbox/AP50``, …, ``num_images``: images evaluated; with a segmentation head also
``segm/AP``, … from masks pasted at the original image size,
:mod:`msvision.evaluation.masks`, and with ``eval.box_mask_baseline``
``box_as_mask/AP``, …: the mask metrics of the predicted boxes filled as masks, the
trivial baseline of a mask head; with ``eval.boundary_ap`` ``boundary/AP``, …: mask AP
with the Boundary IoU, :mod:`msvision.evaluation.coco_boundary`) and, when asked, ``vis_<step>/*.png`` with
predicted boxes (solid, masks blended) and ground truth (dashed).

A panoptic dataset (``data.source='coco_panoptic'``) also gets the panoptic
post-processing of every image (``eval.panoptic``,
:mod:`msvision.evaluation.panoptic_postprocess`): the COCO panoptic predictions
``panoptic_<step>/*.png`` + ``panoptic_<step>.json`` and ``panoptic/PQ``, ``SQ``, ``RQ``,
``PQ_th``, …, ``PQ_st`` (fractions) in the metrics; its ``bbox``/``segm`` AP is
computed against every segment as an instance (things and stuff,
:func:`~msvision.evaluation.panoptic_predictions.panoptic_to_coco_instances`), and the
pictures show the panoptic prediction beside the ground truth.

Several processes: each reads its share of every global batch (process ``i`` of
``n``: images ``≡ i (mod n)``, ``msvision.data.pipeline``), the predictions are
gathered to every process, and process 0 alone writes the files and runs the COCO
evaluation (the others return ``{}``). Each image is evaluated exactly once:
padding samples and repeats (an unreadable image replaced by the next readable
one) are dropped, ``num_images`` counts the distinct images.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Mapping, Optional

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from msvision.evaluation import coco_eval, visualize
from msvision.evaluation import panoptic as panoptic_metric
from msvision.evaluation.masks import detection_box_masks, detection_image_masks
from msvision.evaluation.panoptic_postprocess import PanopticPostProcess
from msvision.evaluation.panoptic_predictions import PanopticPredictionWriter, panoptic_to_coco_instances
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
    """
    eval_iter = data_setup.build_eval_iterator(
        dataset_info, shard_index=jax.process_index(), shard_count=jax.process_count()
    )
    results: list[dict] = []
    seen: set[int] = set()
    box_mask_results: list[dict] = []  # eval.box_mask_baseline: the boxes filled as masks
    box_mask_baseline = bool(config.get("eval", {}).get("box_mask_baseline", False))
    vis_dir = os.path.join(workdir, "eval", f"vis_{step}")
    drawn = 0
    is_main = jax.process_index() == 0
    has_masks = False
    data_cfg = dataset_info.data_cfg
    panoptic = None  # the panoptic predictions of a panoptic dataset (process 0)
    if data_cfg.source == "coco_panoptic" and is_main:
        section = config.get("eval", {}).get("panoptic", None)
        post = PanopticPostProcess(**(section.to_dict() if section is not None else {}))
        panoptic = PanopticPredictionWriter(data_cfg.val.panoptic, data_cfg.val.panoptic_dir,
                                            os.path.join(workdir, "eval", f"panoptic_{step}"),
                                            dataset_info.label_to_category, post)
    for local_batch in tqdm(eval_iter, desc="eval", disable=not is_main, dynamic_ncols=True):
        batch = sharding_lib.shard_batch(local_batch, mesh)
        # Every process gets the whole global batch: its own images and the others'.
        detections = sharding_lib.gather_to_host(predict(batch))
        image_ids = _first_occurrences(sharding_lib.gather_to_host(batch.image_ids), seen)
        orig_sizes = sharding_lib.gather_to_host(batch.orig_sizes) if detections.masks is not None else None
        input_sizes = sharding_lib.gather_to_host(batch.image_sizes) if data_cfg.source == "coco_panoptic" else None
        if not is_main:
            continue
        panoptic_ids = {}
        if panoptic is not None:
            if detections.masks is None:
                raise ValueError("a panoptic dataset needs a segmentation head (model.seg_head)")
            for i, image_id in enumerate(image_ids):
                if image_id >= 0:
                    v = np.asarray(detections.valid[i], bool)
                    panoptic_ids[int(image_id)] = panoptic.add(
                        image_id, detections.masks[i][v], detections.mask_boxes[i][v], detections.scores[i][v],
                        detections.labels[i][v], input_sizes[i], orig_sizes[i])
        image_masks = None
        if detections.masks is not None:  # segmentation head: masks at the original size
            has_masks = True
            image_masks = detection_image_masks(detections, orig_sizes)
            if box_mask_baseline:
                box_mask_results.extend(coco_eval.detections_to_coco_results(
                    detections, image_ids, dataset_info.label_to_category,
                    image_masks=detection_box_masks(detections, orig_sizes)))
        results.extend(
            coco_eval.detections_to_coco_results(detections, image_ids, dataset_info.label_to_category,
                                                 image_masks=image_masks)
        )
        if drawn < visualize_count and panoptic is not None:
            drawn += _draw_panoptic(image_ids, panoptic_ids, panoptic, dataset_info, vis_dir, visualize_count - drawn)
        elif drawn < visualize_count:
            drawn += _draw(image_ids, detections, dataset_info, vis_dir, visualize_count - drawn,
                           image_masks=image_masks)
    if len(seen) != len(dataset_info.val_source):
        log.warning("evaluated %d of the %d validation images (unreadable ones are skipped)",
                    len(seen), len(dataset_info.val_source))
    metrics: dict[str, float] = {}
    if is_main:
        out_dir = os.path.join(workdir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        coco_eval.write_results_json(os.path.join(out_dir, f"results_{step}.json"), results)
        ground_truth = dataset_info.val_annotations
        if data_cfg.source == "coco_panoptic":  # every segment an instance (as DetSeg's panoptic training)
            ground_truth = panoptic_to_coco_instances(data_cfg.val.panoptic, data_cfg.val.panoptic_dir, seen)
        iou_types = ("bbox", "segm") if has_masks else ("bbox",)
        if has_masks and bool(config.get("eval", {}).get("boundary_ap", False)):
            iou_types += ("boundary",)
        evaluator = coco_eval.CocoEvaluator(ground_truth, iou_types=iou_types)
        evaluator.add(results)
        metrics = evaluator.evaluate()
        if box_mask_results:
            baseline = coco_eval.CocoEvaluator(ground_truth, iou_types=("segm",))
            baseline.add(box_mask_results)
            metrics.update({f"box_as_mask/{k.split('/', 1)[1]}": v for k, v in baseline.evaluate().items()})
        print(f"COCO evaluation at step {step} ({len(seen)} images, {len(results)} detections):")
        print(coco_eval.format_table(metrics))
        if panoptic is not None:
            summary = panoptic.finish()
            print(f"Panoptic quality at step {step} ({panoptic.pq.num_images} images):")
            print(panoptic_metric.format_table(summary))
            metrics.update({f"panoptic/{k}": float(v) for k, v in summary.items()})
        metrics["num_images"] = float(len(seen))
        metrics.update(extra_metrics or {})
        with open(os.path.join(out_dir, f"metrics_{step}.json"), "w") as f:
            json.dump(dict(metrics, step=step), f, indent=2)
    return {f"eval/{k}": v for k, v in metrics.items()}


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


def _draw_panoptic(image_ids: np.ndarray, panoptic_ids: dict, writer: PanopticPredictionWriter, dataset_info,
                   out_dir: str, limit: int) -> int:
    """Writes up to ``limit`` PNGs: the panoptic prediction (left) beside the ground truth (right)."""
    os.makedirs(out_dir, exist_ok=True)
    names = dict(zip(dataset_info.label_to_category, dataset_info.class_names))
    labels = {c: k for k, c in enumerate(dataset_info.label_to_category)}
    isthing = {int(c["id"]): int(c.get("isthing", 1)) for c in writer.categories}
    count = 0
    for image_id in np.asarray(image_ids).reshape(-1):
        if count >= limit or int(image_id) not in panoptic_ids:
            continue
        image = data_setup.load_original_image(dataset_info, int(image_id))
        ids, segments = panoptic_ids[int(image_id)]
        pictures = [visualize.draw_panoptic(image, ids, segments, names, category_labels=labels)]
        gt = writer.gt_by_image.get(int(image_id))
        if gt is not None:
            gt_ids = panoptic_metric.read_id_map(os.path.join(writer.gt_dir, gt["file_name"]))
            gt_segments = [dict(s, isthing=isthing.get(int(s["category_id"]), 1)) for s in gt["segments_info"]]
            pictures.append(visualize.draw_panoptic(image, gt_ids, gt_segments, names, category_labels=labels))
        visualize.save_grid(pictures, os.path.join(out_dir, f"{int(image_id)}.png"), num_columns=2)
        count += 1
    return count


def _draw(image_ids: np.ndarray, detections: Detections, dataset_info, out_dir: str, limit: int,
          image_masks=None) -> int:
    """Writes up to ``limit`` PNGs (original resolution) of a gathered global batch:
    ``image_ids [B] int`` (``-1`` = padding) and its ``detections``; returns how many.
    ``image_masks``: optional per image ``[K, h, w] bool`` masks of the detections (drawn)."""
    os.makedirs(out_dir, exist_ok=True)
    count = 0
    for i, image_id in enumerate(np.asarray(image_ids).reshape(-1)):
        if count >= limit or image_id < 0:
            continue
        image_id = int(image_id)
        image = data_setup.load_original_image(dataset_info, image_id)
        gt_boxes, gt_labels = data_setup.original_ground_truth(dataset_info, image_id)
        picture = visualize.draw_detections(
            image,
            detections.boxes[i][detections.valid[i]],
            detections.labels[i][detections.valid[i]],
            detections.scores[i][detections.valid[i]],
            dataset_info.class_names,
            gt_boxes=gt_boxes,
            gt_labels=gt_labels,
            masks=None if image_masks is None else image_masks[i][detections.valid[i]],
        )
        picture.save(os.path.join(out_dir, f"{image_id}.png"))
        count += 1
    return count
