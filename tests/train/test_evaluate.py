"""``evaluate_detector`` on the synthetic validation split with a stand-in ``predict``: the
metrics it returns and writes are the ones pycocotools' COCOeval (box, mask AP),
``coco_boundary_ap`` and PanopticQuality compute by hand from the same predictions, under the
same keys; and the gathering step keeps each image once."""

import contextlib
import io
import json
import os
import sys

import jax
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(__file__))
import tiny_effseg_config  # noqa: E402
import tiny_panoptic_config  # noqa: E402

from msvision import config_sections  # noqa: E402
from msvision.evaluation.coco_boundary import coco_boundary_ap  # noqa: E402
from msvision.evaluation.coco_eval import METRIC_NAMES  # noqa: E402
from msvision.evaluation.panoptic import PanopticQuality, read_id_map  # noqa: E402
from msvision.evaluation.panoptic_postprocess import PanopticPostProcess  # noqa: E402
from msvision.evaluation.panoptic_predictions import panoptic_segmentation, panoptic_to_coco_instances  # noqa: E402
from msvision.structures import Batch, Detections  # noqa: E402
from msvision.train import data_setup  # noqa: E402
from msvision.train import sharding as sharding_lib  # noqa: E402
from msvision.train.evaluate import evaluate_detector, gather_global_batch  # noqa: E402

STEP = 7
S = 16  # mask grid: one cell per pixel of an S × S mask box at integer pixels (an exact paste)


class StandInPredict:
    """A deterministic ``predict``: per image the ground-truth boxes scaled to the original
    size and jittered, some labels changed, three false positives, a disk on an S × S mask
    box around each box centre. Records every global batch it returns (numpy)."""

    def __init__(self, num_classes: int, with_masks: bool):
        self.num_classes, self.with_masks = num_classes, with_masks
        self.calls: list[tuple[np.ndarray, np.ndarray, Detections]] = []

    def __call__(self, batch: Batch) -> Detections:
        b = jax.device_get(batch)
        ids, orig = np.asarray(b.image_ids), np.asarray(b.orig_sizes)
        scale = np.tile((orig / np.asarray(b.image_sizes))[:, ::-1], 2)[:, None, :]
        num, m = b.labels.shape
        k_max = m + 3
        boxes, mask_boxes = np.zeros((num, k_max, 4), np.float32), np.zeros((num, k_max, 4), np.float32)
        scores, labels = np.zeros((num, k_max), np.float32), np.zeros((num, k_max), np.int32)
        valid = np.zeros((num, k_max), bool)
        yy, xx = np.mgrid[0:S, 0:S] + 0.5
        disk = (np.hypot(yy - S / 2, xx - S / 2) <= S / 2 - 2).astype(np.float32)
        for i in range(num):
            rng = np.random.default_rng(int(ids[i]) + 7)
            n = int(np.asarray(b.valid[i]).sum())
            h0, w0 = (float(v) for v in orig[i])
            fp = rng.uniform(0, min(h0, w0) - 20, (3, 2))
            found = np.concatenate([b.boxes[i, :n] * scale[i] + rng.normal(0, 1.5, (n, 4)),
                                    np.concatenate([fp, fp + rng.uniform(8, 20, (3, 2))], 1)])
            found[:, 0::2] = np.clip(found[:, 0::2], 0, w0)
            found[:, 1::2] = np.clip(found[:, 1::2], 0, h0)
            lab = np.concatenate([b.labels[i, :n], rng.integers(0, self.num_classes, 3)])
            lab = np.where(rng.uniform(size=n + 3) < 0.2, rng.integers(0, self.num_classes, n + 3), lab)
            order = np.argsort(-rng.uniform(0.05, 1.0, n + 3))
            boxes[i, :n + 3], labels[i, :n + 3] = found[order], lab[order]
            scores[i, :n + 3] = np.linspace(0.95, 0.1, n + 3)
            valid[i, :n + 3] = True
            centres = np.round((boxes[i, :, :2] + boxes[i, :, 2:]) / 2)
            mask_boxes[i] = np.concatenate([centres - S / 2, centres + S / 2], 1)
        masks = np.broadcast_to(disk, (num, k_max, S, S)).copy()
        dets = Detections(boxes, scores, labels, valid, masks if self.with_masks else None,
                          mask_boxes if self.with_masks else None)
        self.calls.append((ids, orig, np.asarray(b.image_sizes), dets))
        return dets


def exact_paste(grid: np.ndarray, mask_box: np.ndarray, height: int, width: int) -> np.ndarray:
    """``grid > 0.5`` placed on its integer S × S box, clipped to the image."""
    x0, y0 = int(mask_box[0]), int(mask_box[1])
    out = np.zeros((height + 2 * S, width + 2 * S), bool)
    out[y0 + S:y0 + 2 * S, x0 + S:x0 + 2 * S] = grid > 0.5
    return out[S:S + height, S:S + width]


def to_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def results_by_hand(predict: StandInPredict, label_to_category, *, masks: str = "") -> list[dict]:
    """COCO results of every recorded detection of a real image, each image once;
    ``masks``: '' (none), 'pasted' (the exact paste) or 'boxes' (pixel centres in the box)."""
    out, seen = [], set()
    for ids, orig, _, dets in predict.calls:
        for i, image_id in enumerate(ids.tolist()):
            if image_id < 0 or image_id in seen:
                continue
            seen.add(image_id)
            h, w = (int(v) for v in orig[i])
            for k in np.flatnonzero(dets.valid[i]):
                x0, y0, x1, y1 = dets.boxes[i, k].astype(np.float64).tolist()
                r = {"image_id": image_id, "category_id": int(label_to_category[dets.labels[i, k]]),
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(dets.scores[i, k])}
                if masks == "pasted":
                    r["segmentation"] = to_rle(exact_paste(dets.masks[i, k], dets.mask_boxes[i, k], h, w))
                elif masks == "boxes":
                    cy, cx = np.mgrid[0:h, 0:w] + 0.5
                    r["segmentation"] = to_rle((cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1))
                out.append(r)
    return out


def cocoeval_by_hand(gt: COCO, results: list[dict], iou_type: str) -> dict[str, float]:
    if iou_type == "bbox":
        results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluation.params.imgIds = sorted({r["image_id"] for r in results})
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return dict(zip(METRIC_NAMES, evaluation.stats.tolist()))


def load_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def run_evaluation(config, workdir, with_masks):
    info = data_setup.dataset_info(config.data)
    predict = StandInPredict(info.classes.num_classes, with_masks)
    metrics = evaluate_detector(config, info, predict, sharding_lib.make_mesh(), str(workdir), STEP,
                                visualize_count=2, extra_metrics={"checkpoint/skipped": 1.0})
    with open(workdir / "eval" / f"metrics_{STEP}.json") as f:
        written = json.load(f)
    assert written == dict({k[len("eval/"):]: v for k, v in metrics.items()}, step=STEP)
    assert len(os.listdir(workdir / "eval" / f"vis_{STEP}")) == 2
    return info, predict, metrics


def test_instance_metrics_equal_pycocotools_by_hand(tmp_path):
    config = config_sections.resolve_config(tiny_effseg_config.get_config(str(tmp_path / "shapes")))
    config.eval.box_mask_baseline = True
    config.eval.boundary_ap = True
    info, predict, metrics = run_evaluation(config, tmp_path / "run", with_masks=True)
    num_val = len(info.val_source)

    prefixes = ("bbox", "segm", "boundary", "box_as_mask")
    assert list(metrics) == [f"eval/{p}/{n}" for p in prefixes for n in METRIC_NAMES] + [
        "eval/num_images", "eval/checkpoint/skipped"]  # the keys of metrics.jsonl, in this order
    assert metrics["eval/num_images"] == num_val and metrics["eval/checkpoint/skipped"] == 1.0
    gt = load_coco(info.val_annotations)
    pasted = results_by_hand(predict, info.classes.label_to_category, masks="pasted")
    with open(tmp_path / "run" / "eval" / f"results_{STEP}.json") as f:
        assert json.load(f) == pasted
    expected = {
        "bbox": cocoeval_by_hand(gt, pasted, "bbox"),
        "segm": cocoeval_by_hand(gt, pasted, "segm"),
        "boundary": coco_boundary_ap(gt, pasted, image_ids={r["image_id"] for r in pasted}),
        "box_as_mask": cocoeval_by_hand(gt, results_by_hand(predict, info.classes.label_to_category, masks="boxes"),
                                        "segm"),
    }
    for prefix in prefixes:
        got = [metrics[f"eval/{prefix}/{n}"] for n in METRIC_NAMES]
        np.testing.assert_allclose(got, [expected[prefix][n] for n in METRIC_NAMES], rtol=0, atol=1e-12,
                                   err_msg=prefix)
        assert 0 < metrics[f"eval/{prefix}/AP"] < 1, prefix  # a comparison that can tell numbers apart


def test_panoptic_metrics_equal_panoptic_quality_and_pycocotools_by_hand(tmp_path):
    config = config_sections.resolve_config(tiny_panoptic_config.get_config(str(tmp_path / "shapes")))
    info, predict, metrics = run_evaluation(config, tmp_path / "run", with_masks=True)
    val = info.data_cfg.val  # the synthetic dataset's paths (data_setup.prepare_synthetic)
    with open(val.panoptic) as f:
        panoptic_gt = json.load(f)
    by_image = {a["image_id"]: a for a in panoptic_gt["annotations"]}
    isthing = {c["id"]: bool(c["isthing"]) for c in panoptic_gt["categories"]}
    post = PanopticPostProcess(**config.eval.panoptic.to_dict())
    pq = PanopticQuality(panoptic_gt["categories"])
    for ids, orig, input_sizes, dets in predict.calls:
        for i, image_id in enumerate(ids.tolist()):
            if image_id < 0:
                continue
            v = dets.valid[i]
            pred_ids, segments = panoptic_segmentation(
                post, dets.masks[i][v], dets.mask_boxes[i][v], dets.scores[i][v], dets.labels[i][v], input_sizes[i],
                orig[i], label_is_thing=[isthing[c] for c in info.classes.label_to_category],
                label_to_category=info.classes.label_to_category)
            gt = by_image[image_id]
            pq.add(read_id_map(os.path.join(val.panoptic_dir, gt["file_name"])), gt["segments_info"], pred_ids,
                   segments)
    summary = pq.summary()
    assert [k for k in metrics if k.startswith("eval/panoptic/")] == [f"eval/panoptic/{k}" for k in summary]
    assert {k: metrics[f"eval/panoptic/{k}"] for k in summary} == summary
    assert 0 < summary["PQ"] < 1

    # Box and mask AP against every segment, thing or stuff, as an instance.
    gt = panoptic_to_coco_instances(val.panoptic, val.panoptic_dir)
    pasted = results_by_hand(predict, info.classes.label_to_category, masks="pasted")
    for prefix in ("bbox", "segm"):
        expected = cocoeval_by_hand(gt, pasted, prefix)
        np.testing.assert_allclose([metrics[f"eval/{prefix}/{n}"] for n in METRIC_NAMES],
                                   [expected[n] for n in METRIC_NAMES], rtol=0, atol=1e-12, err_msg=prefix)
    eval_dir = tmp_path / "run" / "eval"
    with open(eval_dir / f"panoptic_{STEP}.json") as f:
        assert len(json.load(f)["annotations"]) == len(info.val_source)
    assert len(os.listdir(eval_dir / f"panoptic_{STEP}")) == len(info.val_source)


def test_gathering_keeps_each_image_once():
    """Padding (-1) stays, a repeat within the batch or of an earlier batch becomes -1; the
    predictions are passed on as numpy."""
    def batch(ids):
        n = len(ids)
        return Batch(images=np.zeros((n, 4, 4, 3), np.uint8), image_sizes=np.full((n, 2), 4),
                     orig_sizes=np.full((n, 2), 8), image_ids=np.array(ids, np.int32),
                     boxes=np.zeros((n, 1, 4)), labels=np.zeros((n, 1), np.int32), valid=np.zeros((n, 1), bool),
                     is_crowd=np.zeros((n, 1), bool))

    dets = Detections(np.ones((4, 2, 4)), np.ones((4, 2)), np.zeros((4, 2), np.int32), np.ones((4, 2), bool))
    seen: set[int] = set()
    inputs, gathered = gather_global_batch(batch([3, 7, 3, -1]), dets, seen)
    assert inputs.image_ids.tolist() == [3, 7, -1, -1] and inputs.evaluated_images() == [(0, 3), (1, 7)]
    assert inputs.orig_sizes.tolist() == [[8, 8]] * 4 and isinstance(gathered.boxes, np.ndarray)
    inputs, _ = gather_global_batch(batch([7, 5, -1, -1]), dets, seen)
    assert inputs.image_ids.tolist() == [-1, 5, -1, -1] and seen == {3, 5, 7}


def test_a_panoptic_split_needs_a_segmentation_head(tmp_path):
    config = config_sections.resolve_config(tiny_panoptic_config.get_config(str(tmp_path / "shapes")))
    info = data_setup.dataset_info(config.data)
    predict = StandInPredict(info.classes.num_classes, with_masks=False)
    with pytest.raises(ValueError, match="needs a segmentation head"):
        evaluate_detector(config, info, predict, sharding_lib.make_mesh(), str(tmp_path / "run"), STEP)


def test_lvis_annotations_add_ap_star_equal_to_the_lvis_rules_on_the_written_results(tmp_path):
    """``eval.lvis_annotations``: AP* and AP^B* of the run's own results file against that ground
    truth, the numbers ``evaluate_lvis`` gives on ``results_<step>.json`` (the federated rules:
    a class listed as not exhaustive in an image is neither a hit nor a miss there)."""
    from msvision.evaluation.lvis_eval import evaluate_lvis

    config = config_sections.resolve_config(tiny_effseg_config.get_config(str(tmp_path / "shapes")))
    info = data_setup.dataset_info(config.data)
    with open(info.val_annotations) as f:
        lvis = json.load(f)
    categories = [c["id"] for c in lvis["categories"]]
    for i, image in enumerate(lvis["images"]):  # LVIS-style images: federated lists per image
        present = {a["category_id"] for a in lvis["annotations"] if a["image_id"] == image["id"]}
        image["neg_category_ids"] = [c for c in categories if c not in present][:1]
        image["not_exhaustive_category_ids"] = sorted(present)[:1] if i % 2 else []
    for c, category in zip("fcr" * len(categories), lvis["categories"]):
        category["frequency"] = c
    path = tmp_path / "lvis_style.json"
    path.write_text(json.dumps(lvis))
    config.eval.lvis_annotations = str(path)
    config.eval.boundary_ap = True
    _, _, metrics = run_evaluation(config, tmp_path / "run", with_masks=True)

    with open(tmp_path / "run" / "eval" / f"results_{STEP}.json") as f:
        results = json.load(f)
    for iou_type in ("segm", "boundary"):
        expected = evaluate_lvis(str(path), results, iou_type=iou_type)
        got = {k[len(f"eval/lvis_{iou_type}/"):]: v for k, v in metrics.items()
               if k.startswith(f"eval/lvis_{iou_type}/")}
        assert got.keys() == expected.keys()
        np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=0, atol=1e-12)
        assert 0 < got["AP"] < 1, iou_type
    # The federated rules change the number: the same results against the plain COCO-style file.
    assert metrics["eval/lvis_segm/AP"] != pytest.approx(metrics["eval/segm/AP"], abs=1e-6)
