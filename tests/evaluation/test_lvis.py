"""Cocofied LVIS, AP* and AP^B*: hand-computed rules, and the ``lvis`` 0.5.3 package as oracle."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from msvision.evaluation.lvis import cocofy_lvis
from msvision.evaluation.lvis_eval import IOU_THRESHOLDS, _match, annotation_to_rle, evaluate_lvis

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SUBSET = os.path.join(HERE, "..", "data", "lvis_v0.5_val_subset")
DOCUMENTED_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def lvis_package():
    """``lvis`` 0.5.3 under numpy 2: its accumulate uses the removed ``np.float``."""
    np.float = float  # noqa: NPY001 (restores the alias lvis 0.5.3 needs)
    import lvis

    return lvis


def to_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def square(h, w, y0, x0, size):
    m = np.zeros((h, w), bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


@pytest.fixture(scope="module")
def lvis_subset():
    with open(os.path.join(SUBSET, "lvis_v0.5_val_subset.json")) as f:
        lvis = json.load(f)
    with open(os.path.join(SUBSET, "coco_to_synset.json")) as f:
        synsets = json.load(f)
    return lvis, synsets


@pytest.fixture(scope="module")
def cocofied(lvis_subset):
    return cocofy_lvis(*lvis_subset)


# -- cocofy -----------------------------------------------------------------------


def test_cocofy_hand_made():
    lvis = {
        "info": {"v": 1},
        "images": [{"id": 7, "height": 10, "width": 10, "neg_category_ids": [2, 4], "not_exhaustive_category_ids": [3]}],
        "categories": [
            {"id": 1, "synset": "person.n.01", "frequency": "f"},
            {"id": 2, "synset": "acorn.n.01", "frequency": "r"},
            {"id": 3, "synset": "dog.n.01", "frequency": "f"},
            {"id": 4, "synset": "bicycle.n.01", "frequency": "c"},
            {"id": 5, "synset": "cat.n.01", "frequency": "f"},
        ],
        "annotations": [
            {"id": 10, "image_id": 7, "category_id": 1, "area": 4.0},
            {"id": 11, "image_id": 7, "category_id": 2, "area": 4.0},
            {"id": 12, "image_id": 7, "category_id": 3, "area": 4.0},
        ],
    }
    synsets = {
        "person": {"coco_cat_id": 1, "synset": "person.n.01"},
        "dog": {"coco_cat_id": 18, "synset": "dog.n.01"},
        "bicycle": {"coco_cat_id": 2, "synset": "bicycle.n.01"},
        "cat": {"coco_cat_id": 17, "synset": "cat.n.01"},
    }
    before = copy.deepcopy(lvis)
    out = cocofy_lvis(lvis, synsets)
    assert lvis == before  # input untouched
    assert [(a["id"], a["category_id"]) for a in out["annotations"]] == [(1, 1), (2, 18)]
    assert out["images"][0]["neg_category_ids"] == [2]  # acorn dropped, bicycle 4 → 2
    assert out["images"][0]["not_exhaustive_category_ids"] == [18]
    # categories in LVIS order with COCO ids; cat (17) occurs nowhere and is dropped
    assert [c["id"] for c in out["categories"]] == [1, 18, 2]
    assert out["info"] == {"v": 1}
    # detectron2's list form of the table gives the same result
    as_list = [{"synset": v["synset"], "coco_cat_id": v["coco_cat_id"]} for v in synsets.values()]
    assert cocofy_lvis(lvis, as_list) == out


def test_cocofy_real_subset(lvis_subset, cocofied):
    lvis, synsets = lvis_subset
    coco_of = {v["synset"]: v["coco_cat_id"] for v in synsets.values()}
    synset_of = {c["id"]: c["synset"] for c in lvis["categories"]}
    kept = [a for a in lvis["annotations"] if synset_of[a["category_id"]] in coco_of]
    assert len(cocofied["annotations"]) == len(kept) > 100
    for new, old in zip(cocofied["annotations"], kept):
        assert new["category_id"] == coco_of[synset_of[old["category_id"]]]
        assert new["segmentation"] == old["segmentation"] and new["image_id"] == old["image_id"]
    assert [a["id"] for a in cocofied["annotations"]] == list(range(1, len(kept) + 1))
    coco_ids = set(coco_of.values())
    for new, old in zip(cocofied["images"], lvis["images"]):
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            expected = [coco_of[synset_of[c]] for c in old[key] if synset_of[c] in coco_of]
            assert new[key] == expected
    assert {c["id"] for c in cocofied["categories"]} <= coco_ids
    assert len(cocofied["images"]) == len(lvis["images"])


# -- the LVIS rules on hand-made cases -------------------------------------------------


def federated_case(*, negatives=True, not_exhaustive=True, neg_key=True):
    """Two 40×40 images; categories 1–4 with one object each (see the expected APs)."""
    h = w = 40
    gts = [(1, 1, square(h, w, 2, 2, 10)), (1, 3, square(h, w, 20, 20, 10)), (2, 2, square(h, w, 5, 5, 12)), (2, 4, square(h, w, 22, 5, 12))]
    images = []
    for i in (1, 2):
        img = {"id": i, "height": h, "width": w}
        if neg_key:
            img["neg_category_ids"] = [2] if (i == 1 and negatives) else []
            img["not_exhaustive_category_ids"] = [3] if (i == 1 and not_exhaustive) else []
        images.append(img)
    anns = [
        {"id": k + 1, "image_id": i, "category_id": c, "segmentation": to_rle(m), "area": float(m.sum())}
        for k, (i, c, m) in enumerate(gts)
    ]
    cats = [{"id": c, "name": f"c{c}", "frequency": "f"} for c in (1, 2, 3, 4)]
    det = lambda i, c, m, s: {"image_id": i, "category_id": c, "segmentation": to_rle(m), "score": s}  # noqa: E731
    results = [
        det(1, 1, gts[0][2], 0.9),  # TP
        det(1, 2, square(h, w, 25, 2, 8), 0.8),  # cat 2 on its negative image: FP
        det(1, 4, square(h, w, 30, 30, 6), 0.95),  # cat 4: neither in image 1 nor negative: dropped
        det(1, 3, gts[1][2], 0.7),  # TP
        det(1, 3, square(h, w, 2, 25, 8), 0.85),  # unmatched cat 3, not exhaustive: ignored
        det(2, 2, gts[2][2], 0.5),  # TP
        det(2, 4, gts[3][2], 0.6),  # TP
    ]
    return {"images": images, "annotations": anns, "categories": cats}, results


@pytest.mark.parametrize(
    "negatives, not_exhaustive, expected",
    [
        (True, True, (1.0 + 0.5 + 1.0 + 1.0) / 4),  # cat 2: FP (0.8) before its TP (0.5)
        (False, True, 1.0),  # image 1 says nothing about cat 2: its detection is dropped
        (True, False, (1.0 + 0.5 + 0.5 + 1.0) / 4),  # cat 3's unmatched detection is a FP
    ],
)
def test_federated_rules(negatives, not_exhaustive, expected):
    gt, results = federated_case(negatives=negatives, not_exhaustive=not_exhaustive)
    metrics = evaluate_lvis(gt, results)
    assert metrics["AP"] == pytest.approx(expected, abs=1e-9)
    assert metrics["AP50"] == pytest.approx(expected, abs=1e-9)


def test_without_negative_lists_every_detection_counts():
    """COCO-style ground truth (no ``neg_category_ids``): no federated filtering, so
    cat 4's detection on image 1 is a FP (0.95, before the TP at 0.6)."""
    gt, results = federated_case(neg_key=False)
    assert evaluate_lvis(gt, results)["AP"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.5) / 4, abs=1e-9)


@pytest.mark.parametrize("num_fp, expected", [(299, 1 / 300), (300, 0.0)])
def test_at_most_300_detections_per_image(num_fp, expected):
    """One object; ``num_fp`` higher-scored misses and the exact mask scored lowest. With
    300 detections the hit is the 300th (precision 1/300 at every recall); with 301 it
    is cut."""
    h, w = 100, 100
    obj = square(h, w, 0, 0, 10)
    gt = {
        "images": [{"id": 1, "height": h, "width": w, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": to_rle(obj), "area": 100.0}],
        "categories": [{"id": 1, "frequency": "f"}],
    }
    miss = to_rle(square(h, w, 50, 50, 20))
    results = [{"image_id": 1, "category_id": 1, "segmentation": miss, "score": 0.5 + 0.4 * k / num_fp} for k in range(num_fp)]
    results.append({"image_id": 1, "category_id": 1, "segmentation": to_rle(obj), "score": 0.1})
    assert evaluate_lvis(gt, results)["AP"] == pytest.approx(expected, abs=1e-12)
    assert evaluate_lvis(gt, results, max_dets=-1)["AP"] == pytest.approx(1 / (num_fp + 1), abs=1e-12)


def test_area_range_bounds_are_inclusive():
    """LVIS 0.5.3 ignores ground truth with area < lo or > hi: 32² is both small and medium."""
    h = w = 100
    objs = [square(h, w, 0, 0, 32), square(h, w, 50, 50, 33)]  # 1024 and 1089 px
    gt = {
        "images": [{"id": 1, "height": h, "width": w, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
        "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": k + 1, "segmentation": to_rle(m), "area": float(m.sum())}
            for k, m in enumerate(objs)
        ],
        "categories": [{"id": 1}, {"id": 2}],
    }
    results = [{"image_id": 1, "category_id": k + 1, "segmentation": to_rle(m), "score": 0.9} for k, m in enumerate(objs)]
    metrics = evaluate_lvis(gt, results)
    assert metrics["APs"] == pytest.approx(1.0)  # only the 1024-px object is small
    assert metrics["APm"] == pytest.approx(1.0)
    assert metrics["APl"] == -1.0
    assert metrics["APr"] == -1.0  # no frequency given


def loop_match(ious, gt_ignore, crowd):
    """The greedy matching of pycocotools / LVISEval as its loops state it, one area
    range: ground truth sorted ignored-last, detections in the given (score) order."""
    order = np.argsort(gt_ignore, kind="mergesort")
    ious, ig, cr = ious[:, order], gt_ignore[order], crowd[order]
    matched = np.zeros((len(IOU_THRESHOLDS), len(ious)), bool)
    matched_ignored = np.zeros_like(matched)
    for t, thr in enumerate(IOU_THRESHOLDS):
        used = np.zeros(len(order), bool)
        for d in range(len(ious)):
            best, m = min(thr, 1 - 1e-10), -1
            for g in range(len(order)):
                if used[g] and not cr[g]:
                    continue
                if m > -1 and not ig[m] and ig[g]:
                    break
                if ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m > -1:
                used[m] = True
                matched[t, d], matched_ignored[t, d] = True, ig[m]
    return matched, matched_ignored


def test_vectorised_matching_equals_the_loops():
    """Ties, IoUs equal to thresholds, ignored and crowd ground truth, several area ranges."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        num_dt, num_gt = rng.integers(1, 9), rng.integers(1, 6)
        ious = rng.integers(0, 21, (num_dt, num_gt)) / 20  # multiples of 0.05: ties and equalities
        gt_ignore = rng.random((4, num_gt)) < 0.3
        crowd = rng.random(num_gt) < 0.2
        gt_ignore |= crowd
        matched, matched_ignored = _match(ious, gt_ignore, crowd)
        for a in range(4):
            expected = loop_match(ious, gt_ignore[a], crowd)
            np.testing.assert_array_equal(matched[a], expected[0])
            np.testing.assert_array_equal(matched_ignored[a], expected[1])


# -- against the lvis package on the real subset -----------------------------------


def perturbed_results(gt, seed=0, with_box=True):
    """Shifted, eroded, relabelled, duplicated and missing masks, random false positives
    (some on negative and not-exhaustive categories), and one image over 300 detections."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    images = {img["id"]: img for img in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    results = []

    def add(image_id, category_id, mask):
        rle = to_rle(mask)
        r = {"image_id": image_id, "category_id": int(category_id), "segmentation": rle, "score": float(rng.random())}
        if with_box:
            r["bbox"] = mask_utils.toBbox(rle).tolist()
        results.append(r)

    for ann in gt["annotations"]:
        img = images[ann["image_id"]]
        m = mask_utils.decode(annotation_to_rle(ann["segmentation"], img["height"], img["width"])).astype(bool)
        u = rng.random()
        if u < 0.1:
            continue  # missed
        if u < 0.3:
            m = ndimage.binary_erosion(m, iterations=int(rng.integers(1, 4)))
        m = np.roll(m, tuple(rng.integers(-5, 6, 2)), axis=(0, 1))
        category = ann["category_id"] if rng.random() > 0.1 else rng.choice(cat_ids)
        add(ann["image_id"], category, m)
        if rng.random() < 0.15:
            add(ann["image_id"], ann["category_id"], np.roll(m, 3, axis=1))  # duplicate
    crowded = gt["images"][0]["id"]
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        candidates = cat_ids + img.get("neg_category_ids", []) * 3 + img.get("not_exhaustive_category_ids", []) * 3
        for _ in range(320 if img["id"] == crowded else 4):
            size = int(rng.integers(4, 90))
            add(img["id"], rng.choice(candidates), square(h, w, int(rng.integers(0, h - size)), int(rng.integers(0, w - size)), size))
    return results


def lvis_oracle(gt, results, tmp_path, boundary=False):
    lvis = lvis_package()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    lvis_gt = lvis.LVIS(str(path))
    cls = boundary_lvis_eval(lvis) if boundary else lvis.LVISEval
    evaluation = cls(lvis_gt, copy.deepcopy(results), "segm")
    evaluation.run()
    return dict(evaluation.get_results())


def api_boundary(mask, dilation_ratio=0.02):
    """boundary-iou-api's ``mask_to_boundary`` (cv2 comes with the ``lvis`` package)."""
    import cv2

    h, w = mask.shape
    d = max(1, int(round(dilation_ratio * np.sqrt(h**2 + w**2))))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return mask - eroded


def boundary_lvis_eval(lvis):
    """LVISEval 0.5.3 with boundary-iou-api's ``compute_iou`` for ``iou_type="boundary"``:
    min(mask IoU, boundary IoU) (LVIS has no crowd)."""

    class BoundaryLVISEval(lvis.LVISEval):
        def compute_iou(self, img_id, cat_id):
            gt, dt = self._get_gt_dt(img_id, cat_id)
            if len(gt) == 0 and len(dt) == 0:
                return []
            dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")]
            iscrowd = [0] * len(gt)
            g = [g["segmentation"] for g in gt]
            d = [d["segmentation"] for d in dt]
            bound = lambda rles: [mask_utils.encode(np.asfortranarray(api_boundary(np.ascontiguousarray(mask_utils.decode(r))))) for r in rles]  # noqa: E731
            mask_ious = np.array(mask_utils.iou(d, g, iscrowd))
            boundary_ious = np.array(mask_utils.iou(bound(d), bound(g), iscrowd))
            return np.minimum(mask_ious, boundary_ious)

    return BoundaryLVISEval


def ground_truth_as_results(gt):
    images = {img["id"]: img for img in gt["images"]}
    out = []
    for ann in gt["annotations"]:
        img = images[ann["image_id"]]
        rle = annotation_to_rle(ann["segmentation"], img["height"], img["width"])
        rle = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "segmentation": rle, "score": 1.0})
    return out


@pytest.mark.parametrize("iou_type", ["segm", "boundary"])
def test_ground_truth_as_prediction_gives_one(cocofied, iou_type):
    metrics = evaluate_lvis(cocofied, ground_truth_as_results(cocofied), iou_type=iou_type)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-9), key


@pytest.mark.parametrize("with_box", [True, False])
def test_ap_star_matches_lvis_package(cocofied, tmp_path, with_box):
    results = perturbed_results(cocofied, seed=1, with_box=with_box)
    ours = evaluate_lvis(cocofied, copy.deepcopy(results))
    oracle = lvis_oracle(cocofied, results, tmp_path)
    assert 0.1 < ours["AP"] < 0.9
    for key, value in oracle.items():
        assert ours[key] == pytest.approx(float(value), abs=1e-12), key


def test_ap_boundary_star_matches_lvis_with_boundary_iou(cocofied, tmp_path):
    results = perturbed_results(cocofied, seed=2)
    ours = evaluate_lvis(cocofied, copy.deepcopy(results), iou_type="boundary")
    oracle = lvis_oracle(cocofied, results, tmp_path, boundary=True)
    assert ours["AP"] < evaluate_lvis(cocofied, copy.deepcopy(results))["AP"]
    for key, value in oracle.items():
        assert ours[key] == pytest.approx(float(value), abs=1e-12), key


# -- the command -----------------------------------------------------------------------


def run_command(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "msvision.evaluation.lvis", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_commands_cocofy_and_eval(tmp_path, cocofied):
    out = tmp_path / "cocofied.json"
    run_command(
        "cocofy",
        "--lvis", os.path.join(SUBSET, "lvis_v0.5_val_subset.json"),
        "--synsets", os.path.join(SUBSET, "coco_to_synset.json"),
        "--out", str(out),
    )  # fmt: skip
    with open(out) as f:
        assert json.load(f) == cocofied
    results = perturbed_results(cocofied, seed=3)
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    for iou_type in ("segm", "boundary"):
        printed = json.loads(run_command("eval", "--gt", str(out), "--results", str(results_path), "--iou-type", iou_type, "--json"))
        assert set(DOCUMENTED_KEYS) <= set(printed)
        expected = evaluate_lvis(cocofied, copy.deepcopy(results), iou_type=iou_type)
        for key in DOCUMENTED_KEYS:
            assert 0.0 <= printed[key] <= 1.0
            assert printed[key] == pytest.approx(expected[key], abs=1e-12)
    table = run_command("eval", "--gt", str(out), "--results", str(results_path))
    assert "Average Precision" in table and "IoU=0.50:0.95" in table
