"""COCO evaluation vs pycocotools called by hand, on synthetic and real ground truth."""

import contextlib
import io
import json
import logging
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from msvision.evaluation.coco_eval import (
    METRIC_NAMES,
    CocoEvaluator,
    detections_to_coco_results,
    format_table,
    write_results_json,
)
from msvision.structures import Detections

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = "coco_panoptic_sample/instances_from_panoptic.json"


def fixture_path():
    return os.path.join(HERE, "..", "data", FIXTURE)


def synthetic_gt():
    """3 images, categories with non-contiguous ids, one crowd region."""
    rng = np.random.default_rng(0)
    images = [{"id": i, "width": 200, "height": 150, "file_name": f"{i}.jpg"} for i in (11, 12, 13)]
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 5, 9)]
    anns = []
    for img in images:
        for _ in range(6):
            x, y = rng.uniform(0, 120), rng.uniform(0, 90)
            w, h = rng.uniform(5, 80), rng.uniform(5, 60)
            anns.append({"image_id": img["id"], "category_id": int(rng.choice([1, 5, 9])),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    anns.append({"image_id": 12, "category_id": 5, "bbox": [150, 100, 40, 40], "area": 1600.0, "iscrowd": 1,
                 "segmentation": mask_utils.frPyObjects([[150, 100, 190, 100, 190, 140, 150, 140]], 150, 200)[0]})
    for i, a in enumerate(anns):
        a["id"] = i + 1
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": cats}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def gt_as_detections(coco, image_ids, label_to_category, max_dets=40, jitter=None, rng=None):
    """Padded Detections holding the non-crowd gt boxes (optionally perturbed)."""
    cat_to_label = {c: i for i, c in enumerate(label_to_category)}
    b = len(image_ids)
    boxes = np.zeros((b, max_dets, 4), np.float32)
    scores = np.zeros((b, max_dets), np.float32)
    labels = np.zeros((b, max_dets), np.int32)
    valid = np.zeros((b, max_dets), bool)
    for i, img in enumerate(image_ids):
        if img < 0:
            continue
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[img])) if not a["iscrowd"]]
        for k, a in enumerate(anns):
            x, y, w, h = a["bbox"]
            box = np.array([x, y, x + w, y + h], np.float64)
            if jitter is not None:
                box = box + rng.normal(0, jitter, 4) * np.array([w, h, w, h])
            boxes[i, k] = box
            scores[i, k] = 1.0 - 0.01 * k
            labels[i, k] = cat_to_label[a["category_id"]]
            valid[i, k] = True
    return Detections(boxes=boxes, scores=scores, labels=labels, valid=valid)


def pycocotools_by_hand(coco, results, image_ids, iou_type="bbox"):
    with contextlib.redirect_stdout(io.StringIO()):
        if any(a["id"] < 1 for a in coco.dataset["annotations"]):
            # pycocotools cannot match an annotation with id 0: renumber by hand.
            dataset = json.loads(json.dumps(coco.dataset))
            for i, a in enumerate(dataset["annotations"]):
                a["id"] = i + 1
            coco = COCO()
            coco.dataset = dataset
            coco.createIndex()
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, iou_type)
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_perfect_shuffled_and_perturbed_synthetic(tmp_path):
    coco = synthetic_gt()
    label_to_category = sorted(coco.getCatIds())
    image_ids = np.array([11, 12, 13, -1])
    det = gt_as_detections(coco, image_ids, label_to_category)
    results = detections_to_coco_results(det, image_ids, label_to_category)
    assert len(results) == 18 and {r["category_id"] for r in results} <= {1, 5, 9}
    assert all(r["image_id"] != -1 for r in results)

    ev = CocoEvaluator(coco)
    ev.add(results)
    metrics = ev.evaluate()
    assert set(metrics) == {f"bbox/{n}" for n in METRIC_NAMES}
    assert metrics["bbox/AP"] == pytest.approx(1.0)
    assert metrics["bbox/AP50"] == pytest.approx(1.0)

    # A detection exactly on the crowd region is ignored, not a false positive.
    ev.add([{"image_id": 12, "category_id": 5, "bbox": [150, 100, 40, 40], "score": 0.99}])
    assert ev.evaluate()["bbox/AP"] == pytest.approx(1.0)

    # Shuffled labels: low AP.
    rng = np.random.default_rng(1)
    shuffled = Detections(boxes=det.boxes, scores=det.scores,
                          labels=(det.labels + rng.integers(1, 3, det.labels.shape)) % 3, valid=det.valid)
    ev = CocoEvaluator(coco)
    ev.add(detections_to_coco_results(shuffled, image_ids, label_to_category))
    assert ev.evaluate()["bbox/AP"] < 0.2

    # Perturbed boxes: the value pycocotools computes directly from a results file.
    noisy = gt_as_detections(coco, image_ids, label_to_category, jitter=0.08, rng=np.random.default_rng(2))
    results = detections_to_coco_results(noisy, image_ids, label_to_category)
    path = tmp_path / "results.json"
    write_results_json(path, results)
    expected = pycocotools_by_hand(coco, str(path), [11, 12, 13])
    ev = CocoEvaluator(coco)
    ev.add(results)
    metrics = ev.evaluate()
    np.testing.assert_allclose([metrics[f"bbox/{n}"] for n in METRIC_NAMES], expected, atol=1e-12)
    assert 0.1 < metrics["bbox/AP"] < 0.95
    table = format_table(metrics)
    assert len(table.splitlines()) == 13
    assert f"= {metrics['bbox/AP']:0.3f}" in table.splitlines()[1]


def test_only_added_images_and_empty(caplog):
    coco = synthetic_gt()
    label_to_category = sorted(coco.getCatIds())
    det = gt_as_detections(coco, [11], label_to_category)
    ev = CocoEvaluator(coco)
    ev.add(detections_to_coco_results(det, [11], label_to_category))
    assert ev.evaluate()["bbox/AP"] == pytest.approx(1.0)  # images 12, 13 not evaluated
    # Registering an image without detections makes its gt count as missed.
    ev.add([], image_ids=[12])
    assert ev.evaluate()["bbox/AR100"] < 1.0

    empty = CocoEvaluator(coco, iou_types=("bbox", "segm"))
    with caplog.at_level(logging.WARNING):
        metrics = empty.evaluate()
    assert all(v == 0.0 for v in metrics.values()) and len(metrics) == 24
    assert "no detections" in caplog.text


def test_real_fixture_bbox_and_segm(caplog):
    path = fixture_path()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(path)
    label_to_category = sorted(coco.getCatIds())
    image_ids = np.array(sorted(coco.getImgIds()))
    det = gt_as_detections(coco, image_ids, label_to_category, max_dets=64)
    image_masks = []
    for i, img in enumerate(image_ids):
        info = coco.loadImgs([int(img)])[0]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[int(img)])) if not a["iscrowd"]]
        masks = np.zeros((64, info["height"], info["width"]), bool)
        for k, a in enumerate(anns):
            masks[k] = coco.annToMask(a).astype(bool)
        image_masks.append(masks)
    results = detections_to_coco_results(det, image_ids, label_to_category, image_masks=image_masks)
    assert isinstance(results[0]["segmentation"]["counts"], str)
    json.dumps(results)
    ev = CocoEvaluator(path, iou_types=("bbox", "segm"))
    ev.add(results)
    with caplog.at_level(logging.WARNING):
        metrics = ev.evaluate()
    assert "categories have no ground truth" in caplog.text
    assert "renumbering annotations" in caplog.text  # the fixture has an annotation with id 0
    assert metrics["bbox/AP"] == pytest.approx(1.0)
    assert metrics["segm/AP"] == pytest.approx(1.0)

    # Perturbed: equal to pycocotools by hand, for both iou types.
    noisy = gt_as_detections(coco, image_ids, label_to_category, max_dets=64, jitter=0.1, rng=np.random.default_rng(0))
    results = detections_to_coco_results(noisy, image_ids, label_to_category)
    ev = CocoEvaluator(coco)
    ev.add(results)
    metrics = ev.evaluate()
    expected = pycocotools_by_hand(coco, results, image_ids.tolist())
    np.testing.assert_allclose([metrics[f"bbox/{n}"] for n in METRIC_NAMES], expected, atol=1e-12)
    assert metrics["bbox/AP"] < 0.9
