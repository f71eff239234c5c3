"""The evaluators, one per metric, against their metric computed by hand: pycocotools'
COCOeval for box and mask AP, ``coco_boundary_ap`` for Boundary AP, ``evaluate_lvis``
for AP*, the panoptic files scored by ``evaluate_panoptic_files`` for PQ; ``reset()``
and evaluating no image."""

import contextlib
import copy
import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from msvision.evaluation import eval_writers
from msvision.evaluation import evaluators as ev
from msvision.evaluation.coco_boundary import coco_boundary_ap
from msvision.evaluation.coco_eval import METRIC_NAMES
from msvision.evaluation.lvis_eval import evaluate_lvis
from msvision.evaluation.panoptic import evaluate_panoptic_files, id_to_rgb
from msvision.evaluation.panoptic_predictions import PanopticGroundTruth
from msvision.structures import Detections

H, W = 48, 64  # image size
S = 12  # mask grid: one cell per pixel of an S × S mask box at integer pixels (an exact paste)
K = 8  # detection slots per image
LABEL_TO_CATEGORY = [1, 5, 9]
IMAGE_IDS = (11, 12, 13)
BATCHES = ((11, 12), (13, -1))  # the last slot a padding sample


def to_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def make_ground_truth(rng):
    """3 images of 4 rectangles and ellipses each (categories 1, 5, 9), one crowd region."""
    annotations = []
    for image_id in IMAGE_IDS:
        for _ in range(4):
            h, w = rng.integers(5, 11, 2)
            y0, x0 = rng.integers(0, H - h), rng.integers(0, W - w)
            mask = np.zeros((H, W), bool)
            if rng.random() < 0.5:
                mask[y0:y0 + h, x0:x0 + w] = True
            else:
                yy, xx = np.mgrid[0:H, 0:W]
                mask = ((yy + 0.5 - y0 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - x0 - w / 2) / (w / 2)) ** 2 <= 1
            annotations.append(dict(image_id=image_id, category_id=int(rng.choice(LABEL_TO_CATEGORY)), mask=mask,
                                    iscrowd=0))
    crowd = np.zeros((H, W), bool)
    crowd[30:46, 40:60] = True
    annotations.append(dict(image_id=12, category_id=5, mask=crowd, iscrowd=1))
    for i, a in enumerate(annotations):
        ys, xs = np.nonzero(a["mask"])
        a.update(id=i + 1, bbox=[float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
                                 float(ys.max() + 1 - ys.min())], area=float(a["mask"].sum()))
    gt = {"images": [{"id": i, "height": H, "width": W, "file_name": f"{i}.jpg"} for i in IMAGE_IDS],
          "annotations": [{k: v for k, v in a.items() if k != "mask"} | {"segmentation": to_rle(a["mask"])}
                          for a in annotations],
          "categories": [{"id": c, "name": f"c{c}"} for c in LABEL_TO_CATEGORY]}
    return gt, annotations


def make_detections(rng, annotations, image_ids):
    """Padded ``Detections`` for a batch: each non-crowd object found with a jittered box, a
    sometimes wrong label and its mask shifted by up to a pixel, plus two false positives
    (also in padding slots, which must be skipped). Returns the detections and, per valid
    detection, the full-image mask the paste has to give."""
    b = len(image_ids)
    boxes = np.zeros((b, K, 4), np.float32)
    mask_boxes = np.zeros((b, K, 4), np.float32)
    scores = np.zeros((b, K), np.float32)
    labels = np.zeros((b, K), np.int32)
    valid = np.zeros((b, K), bool)
    grids = np.zeros((b, K, S, S), np.float32)
    expected_masks = np.zeros((b, K, H, W), bool)
    for i, image_id in enumerate(image_ids):
        objects = [a for a in annotations if a["image_id"] == max(image_id, 11) and not a["iscrowd"]]
        entries = []
        for a in objects:
            x, y, w, h = a["bbox"]
            box = np.array([x, y, x + w, y + h]) + rng.normal(0, 1.0, 4)
            label = LABEL_TO_CATEGORY.index(a["category_id"])
            if rng.random() < 0.2:
                label = int(rng.integers(0, 3))
            entries.append((box, label, np.roll(a["mask"], tuple(rng.integers(-1, 2, 2)), axis=(0, 1))))
        for _ in range(2):
            x0, y0 = rng.uniform(0, W - 12), rng.uniform(0, H - 12)
            fp = np.zeros((H, W), bool)
            fp[int(y0):int(y0) + 6, int(x0):int(x0) + 7] = True
            entries.append((np.array([x0, y0, x0 + 10, y0 + 8]), int(rng.integers(0, 3)), fp))
        order = np.argsort(-rng.uniform(0.05, 1.0, len(entries)))
        for k, j in enumerate(order):
            box, label, mask = entries[j]
            ys, xs = np.nonzero(mask)
            mx = int(np.clip(round((xs.min() + xs.max() + 1) / 2 - S / 2), 0, W - S))
            my = int(np.clip(round((ys.min() + ys.max() + 1) / 2 - S / 2), 0, H - S))
            boxes[i, k], labels[i, k], valid[i, k] = box, label, True
            scores[i, k] = 1.0 - 0.1 * k
            mask_boxes[i, k] = [mx, my, mx + S, my + S]
            grids[i, k] = mask[my:my + S, mx:mx + S]
            expected_masks[i, k, my:my + S, mx:mx + S] = mask[my:my + S, mx:mx + S]
    return Detections(boxes, scores, labels, valid, grids, mask_boxes), expected_masks


def results_by_hand(detections, expected_masks, image_ids):
    """COCO results of the valid detections of the real images, masks from the exact paste."""
    out = []
    for i, image_id in enumerate(image_ids):
        if image_id < 0:
            continue
        for k in np.flatnonzero(detections.valid[i]):
            x0, y0, x1, y1 = detections.boxes[i, k].astype(np.float64).tolist()
            out.append({"image_id": image_id, "category_id": LABEL_TO_CATEGORY[detections.labels[i, k]],
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(detections.scores[i, k]),
                        "segmentation": to_rle(expected_masks[i, k])})
    return out


@pytest.fixture(scope="module")
def scene():
    """The ground truth, the batches ``(inputs, outputs)`` and the results by hand."""
    rng = np.random.default_rng(0)
    gt, annotations = make_ground_truth(rng)
    post = ev.EvalPostProcess(LABEL_TO_CATEGORY)
    batches, results, detections = [], [], []
    for image_ids in BATCHES:
        dets, masks = make_detections(rng, annotations, image_ids)
        sizes = np.array([[H, W]] * len(image_ids))
        inputs = ev.EvalInputs(np.array(image_ids), image_sizes=2 * sizes, orig_sizes=sizes)  # network input 2×
        batches.append((inputs, post(inputs, dets)))
        results += results_by_hand(dets, masks, image_ids)
        detections.append(dets)
    return dict(gt=gt, batches=batches, results=results, detections=detections)


def coco(gt_dict):
    out = COCO()
    out.dataset = copy.deepcopy(gt_dict)
    with contextlib.redirect_stdout(io.StringIO()):
        out.createIndex()
    return out


def cocoeval_by_hand(gt_dict, results, iou_type, image_ids=IMAGE_IDS):
    if iou_type == "bbox":
        results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    gt = coco(gt_dict)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)
        evaluation.params.imgIds = sorted(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def run(evaluator, batches):
    for inputs, outputs in batches:
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def test_the_post_processing_pastes_masks_and_converts_the_real_images(scene):
    """The outputs hold exactly the results by hand: the padding sample's detections are
    dropped, the masks are the exact paste of the grids."""
    instances = [r for _, outputs in scene["batches"] for r in outputs.instances]
    assert len(instances) == len(scene["results"]) == 12 + 3 * 2  # objects (crowd aside) + false positives
    for got, want in zip(instances, scene["results"]):
        assert {k: v for k, v in got.items() if k != "segmentation"} == {k: v for k, v in want.items()
                                                                            if k != "segmentation"}
        np.testing.assert_array_equal(mask_utils.decode(got["segmentation"]), mask_utils.decode(want["segmentation"]))


@pytest.mark.parametrize("make, iou_type", [(ev.BoxAPEvaluator, "bbox"), (ev.MaskAPEvaluator, "segm")])
def test_box_and_mask_ap_equal_pycocotools_by_hand(scene, make, iou_type):
    metrics = run(make(coco(scene["gt"])), scene["batches"])
    assert list(metrics) == [f"{iou_type}/{name}" for name in METRIC_NAMES]
    expected = cocoeval_by_hand(scene["gt"], scene["results"], iou_type)
    np.testing.assert_allclose(list(metrics.values()), expected, rtol=0, atol=1e-12)
    assert 0.2 < metrics[f"{iou_type}/AP"] < 0.95  # neither trivial nor perfect


@pytest.mark.parametrize("make, iou_type", [(ev.BoxAPEvaluator, "bbox"), (ev.MaskAPEvaluator, "segm")])
def test_an_image_without_detections_counts_its_ground_truth_as_missed(scene, make, iou_type):
    """Image 13 processed with no detection: its objects are missed (recall drops), not
    left out of the score."""
    (first, (inputs, outputs)) = scene["batches"]
    silent = [first, (inputs, dataclasses.replace(outputs, instances=[]))]
    metrics = run(make(coco(scene["gt"])), silent)
    results = [r for r in scene["results"] if r["image_id"] != 13]
    expected = cocoeval_by_hand(scene["gt"], results, iou_type, image_ids=IMAGE_IDS)
    np.testing.assert_allclose(list(metrics.values()), expected, rtol=0, atol=1e-12)
    only_detected = cocoeval_by_hand(scene["gt"], results, iou_type, image_ids=(11, 12))
    assert metrics[f"{iou_type}/AR100"] < only_detected[8]


def test_ground_truth_as_a_path_or_a_function_of_the_evaluated_images(scene, tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(scene["gt"]))
    asked = []

    def by_images(image_ids):
        asked.append(image_ids)
        return coco(scene["gt"])

    from_path = run(ev.BoxAPEvaluator(str(path)), scene["batches"])
    from_function = run(ev.BoxAPEvaluator(by_images), scene["batches"])
    assert from_path == from_function == run(ev.BoxAPEvaluator(coco(scene["gt"])), scene["batches"])
    assert asked == [frozenset(IMAGE_IDS)]


def test_boundary_ap_equals_coco_boundary_ap(scene):
    metrics = run(ev.BoundaryAPEvaluator(coco(scene["gt"])), scene["batches"])
    expected = coco_boundary_ap(scene["gt"], scene["results"], image_ids=IMAGE_IDS)
    assert metrics == pytest.approx({f"boundary/{k}": v for k, v in expected.items()}, abs=1e-12)
    assert 0 < metrics["boundary/AP"] < run(ev.MaskAPEvaluator(coco(scene["gt"])), scene["batches"])["segm/AP"]


def test_box_as_mask_ap_equals_the_boxes_filled_by_hand(scene):
    """Mask AP of the predicted boxes as masks: the pixels whose centre is inside the box."""
    centres_y, centres_x = np.mgrid[0:H, 0:W] + 0.5
    filled = []
    for r in scene["results"]:
        x, y, w, h = r["bbox"]
        inside = (centres_x >= x) & (centres_x < x + w) & (centres_y >= y) & (centres_y < y + h)
        filled.append(dict(r, segmentation=to_rle(inside)))
    metrics = run(ev.BoxAsMaskAPEvaluator(coco(scene["gt"]), LABEL_TO_CATEGORY), scene["batches"])
    expected = cocoeval_by_hand(scene["gt"], filled, "segm")
    assert list(metrics) == [f"box_as_mask/{name}" for name in METRIC_NAMES]
    np.testing.assert_allclose(list(metrics.values()), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("iou_type", ["segm", "boundary"])
def test_lvis_ap_equals_evaluate_lvis_on_the_processed_images(scene, iou_type):
    """AP* / AP^B* over the images processed: only the first batch (11, 12) here; image 13
    and its ground truth are left out."""
    first = scene["batches"][:1]
    metrics = run(ev.LvisAPEvaluator(scene["gt"], iou_type=iou_type), first)
    gt = dict(scene["gt"], images=scene["gt"]["images"][:2],
              annotations=[a for a in scene["gt"]["annotations"] if a["image_id"] in (11, 12)])
    results = [r for r in scene["results"] if r["image_id"] in (11, 12)]
    expected = evaluate_lvis(gt, copy.deepcopy(results), iou_type=iou_type)
    assert metrics == {f"lvis_{iou_type}/{k}": v for k, v in expected.items()}
    assert 0 < metrics[f"lvis_{iou_type}/AP"] < 1
    assert metrics[f"lvis_{iou_type}/AP"] != evaluate_lvis(scene["gt"], copy.deepcopy(results),
                                                           iou_type=iou_type)["AP"]


@pytest.fixture
def panoptic_split(tmp_path):
    """Images 21, 22 (30 × 40) of COCO panoptic ground truth: things of category 1 on stuff 5."""
    (tmp_path / "gt").mkdir()
    maps = {21: np.full((30, 40), 2, np.int32), 22: np.full((30, 40), 3, np.int32)}
    maps[21][5:15, 10:25] = 1
    maps[22][2:12, 3:13] = 1
    maps[22][15:28, 20:38] = 2
    segments = {21: [(1, 1), (2, 5)], 22: [(1, 1), (2, 1), (3, 5)]}
    annotations = []
    for image_id, ids in maps.items():
        Image.fromarray(id_to_rgb(ids)).save(tmp_path / "gt" / f"{image_id}.png")
        annotations.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": [
            {"id": s, "category_id": c, "iscrowd": 0} for s, c in segments[image_id]]})
    gt = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 30, "width": 40} for i in maps],
          "annotations": annotations,
          "categories": [{"id": 1, "name": "thing", "isthing": 1}, {"id": 5, "name": "stuff", "isthing": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return PanopticGroundTruth.load(str(tmp_path / "gt.json"), str(tmp_path / "gt")), maps


def panoptic_batch(maps):
    """Image 21 predicted exactly; in 22 the second thing is missed (stuff over it); image 23
    has no ground truth (written, not scored); the last slot is padding."""
    pred_22 = np.where(maps[22] == 2, 3, maps[22])
    info = lambda pairs: [{"id": s, "category_id": c, "iscrowd": 0} for s, c in pairs]  # noqa: E731
    panoptic = [(maps[21], info([(1, 1), (2, 5)])), (pred_22, info([(1, 1), (3, 5)])),
                (np.ones((30, 40), np.int32), info([(1, 5)])), None]
    sizes = np.array([[30, 40]] * 4)
    empty = Detections(np.zeros((4, 1, 4)), np.zeros((4, 1)), np.zeros((4, 1), np.int32), np.zeros((4, 1), bool))
    return ev.EvalInputs(np.array([21, 22, 23, -1]), sizes, sizes), ev.EvalOutputs(empty, [], None, panoptic)


def test_panoptic_quality_equals_the_written_files_scored(panoptic_split, tmp_path):
    ground_truth, maps = panoptic_split
    batch = panoptic_batch(maps)
    files = eval_writers.PanopticPredictionFiles(str(tmp_path / "pred"), ground_truth)
    metrics = run(ev.DatasetEvaluators([ev.PanopticQualityEvaluator(ground_truth), files]), [batch])
    # Things: 2 TP of IoU 1 and 1 FN: PQ 2 / 2.5. Stuff: IoU 1 in image 21, and in 22 the
    # 866 px of stuff predicted with the missed thing's 234 px: IoU 866 / 1100.
    assert metrics["panoptic/PQ_th"] == pytest.approx(0.8)
    assert metrics["panoptic/PQ_st"] == pytest.approx((1 + 866 / 1100) / 2)
    written = json.loads((tmp_path / "pred.json").read_text())
    assert [a["image_id"] for a in written["annotations"]] == [21, 22, 23]
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["21.png", "22.png", "23.png"]
    written["annotations"] = written["annotations"][:2]  # scored: the images with ground truth
    (tmp_path / "pred.json").write_text(json.dumps(written))
    expected = evaluate_panoptic_files(ground_truth.json_path, tmp_path / "pred.json", ground_truth.png_dir,
                                       tmp_path / "pred").summary()
    assert metrics == {f"panoptic/{k}": float(v) for k, v in expected.items()}


def test_results_writer_and_pictures(scene, tmp_path):
    writer = eval_writers.CocoResultsWriter(str(tmp_path / "eval" / "results_3.json"))
    drawn = []
    pictures = eval_writers.DetectionPictures(
        str(tmp_path / "vis"), 2, load_image=lambda i: drawn.append(i) or np.zeros((H, W, 3), np.uint8),
        load_ground_truth=lambda i: (np.array([[1.0, 2.0, 20.0, 30.0]]), np.array([0])), class_names=["a", "b", "c"])
    assert run(ev.DatasetEvaluators([writer, pictures]), scene["batches"]) == {}
    written = json.loads((tmp_path / "eval" / "results_3.json").read_text())
    assert [{k: v for k, v in r.items() if k != "segmentation"} for r in written] == [
        {k: v for k, v in r.items() if k != "segmentation"} for r in scene["results"]]
    assert drawn == [11, 12] and sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["11.png", "12.png"]


def metric_evaluators(scene, ground_truth):
    gt = coco(scene["gt"])
    return {
        "box": ev.BoxAPEvaluator(gt), "mask": ev.MaskAPEvaluator(gt), "boundary": ev.BoundaryAPEvaluator(gt),
        "box_as_mask": ev.BoxAsMaskAPEvaluator(gt, LABEL_TO_CATEGORY),
        "lvis": ev.LvisAPEvaluator(scene["gt"]), "panoptic": ev.PanopticQualityEvaluator(ground_truth),
    }


def test_reset_forgets_what_was_processed(scene, panoptic_split):
    ground_truth, maps = panoptic_split
    batches = {name: [panoptic_batch(maps)] if name == "panoptic" else scene["batches"]
               for name in metric_evaluators(scene, ground_truth)}
    fresh = metric_evaluators(scene, ground_truth)
    for name, evaluator in metric_evaluators(scene, ground_truth).items():
        run(evaluator, batches[name][::-1])  # then forgotten
        evaluator.reset()
        assert run(evaluator, batches[name][:1]) == run(fresh[name], batches[name][:1]), name
    # (the first batch alone scores differently from both: forgetting is visible)
    assert run(ev.BoxAPEvaluator(coco(scene["gt"])), scene["batches"][:1]) != run(
        ev.BoxAPEvaluator(coco(scene["gt"])), scene["batches"])


def test_evaluating_no_image_is_an_error_naming_the_evaluator(scene, panoptic_split, tmp_path):
    """A metric over no image is undefined: NoImagesError, also after only padding samples.
    The files and pictures have nothing to score: an empty results file, no metric."""
    ground_truth, _ = panoptic_split
    inputs, outputs = scene["batches"][1]
    padding = ev.EvalInputs(np.array([-1, -1]), inputs.image_sizes, inputs.orig_sizes)
    for name, evaluator in metric_evaluators(scene, ground_truth).items():
        with pytest.raises(ev.NoImagesError, match=type(evaluator).__name__):
            evaluator.evaluate()
        if name != "panoptic":
            evaluator.process(padding, dataclasses.replace(outputs, instances=[]))
            with pytest.raises(ev.NoImagesError, match="no image was processed"):
                evaluator.evaluate()
    writer = eval_writers.CocoResultsWriter(str(tmp_path / "results.json"))
    assert writer.evaluate() == {} and json.loads((tmp_path / "results.json").read_text()) == []


def test_no_detection_at_all_scores_zero(scene):
    inputs, outputs = scene["batches"][0]
    metrics = run(ev.BoxAPEvaluator(coco(scene["gt"])), [(inputs, dataclasses.replace(outputs, instances=[]))])
    assert metrics == {f"bbox/{name}": 0.0 for name in METRIC_NAMES}


def test_evaluators_merge_in_order_and_refuse_a_repeated_key(scene):
    gt = coco(scene["gt"])
    merged = run(ev.DatasetEvaluators([ev.BoxAPEvaluator(gt), ev.MaskAPEvaluator(gt)]), scene["batches"])
    assert list(merged) == [f"bbox/{n}" for n in METRIC_NAMES] + [f"segm/{n}" for n in METRIC_NAMES]
    with pytest.raises(ValueError, match="BoxAPEvaluator returns keys another evaluator returned"):
        run(ev.DatasetEvaluators([ev.BoxAPEvaluator(gt), ev.BoxAPEvaluator(gt)]), scene["batches"])


def test_mask_metrics_need_a_segmentation_head(scene):
    inputs, outputs = scene["batches"][0]
    boxes_only = dataclasses.replace(outputs, image_masks=None)
    for make in (ev.MaskAPEvaluator, ev.BoundaryAPEvaluator):
        with pytest.raises(ValueError, match="needs masks"):
            make(coco(scene["gt"])).process(inputs, boxes_only)
