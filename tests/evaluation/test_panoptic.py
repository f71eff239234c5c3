"""Panoptic Quality: hand-computed rules, and the real COCO panoptic sample against a
per-segment loop written from the definitions (thesis eqs. 2.4–2.5, panopticapi's rules)."""

import json
import multiprocessing
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from msvision.evaluation.panoptic import (
    PanopticQuality,
    evaluate_panoptic,
    evaluate_panoptic_files,
    id_to_rgb,
    read_id_map,
    rgb_to_id,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SAMPLE = os.path.join(HERE, "..", "data", "coco_panoptic_sample")
KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")

CATEGORIES = [
    {"id": 1, "isthing": 1},
    {"id": 2, "isthing": 1},
    {"id": 3, "isthing": 0},
    {"id": 4, "isthing": 0},
]


def seg(id_, cat, crowd=0):
    return {"id": id_, "category_id": cat, "iscrowd": crowd}


def row(*runs):
    """A 1×N id map from (id, length) runs."""
    return np.concatenate([np.full(n, i, np.int32) for i, n in runs])[None, :]


def single(gt_ids, gt_segs, pred_ids, pred_segs, categories=CATEGORIES):
    pq = PanopticQuality(categories)
    pq.add(gt_ids, gt_segs, pred_ids, pred_segs)
    return pq


# -- hand-computed rules --------------------------------------------------------------


def test_void_pixels_leave_the_union():
    """A: 10 px; then 10 VOID px. X (same class) covers 8 px of A and 6 VOID px:
    IoU = 8 / (14 + 10 − 8 − 6) = 0.8 (8/16 = 0.5 would not even match)."""
    gt = row((5, 10), (0, 10))
    pred = row((0, 2), (9, 14), (0, 4))
    pq = single(gt, [seg(5, 1)], pred, [seg(9, 1)])
    s = pq.summary()
    assert (s["PQ"], s["SQ"], s["RQ"], s["n"]) == (pytest.approx(0.8), pytest.approx(0.8), 1.0, 1)
    assert pq.per_category()[1]["TP"] == 1


def test_iou_of_one_half_is_not_a_match():
    gt = row((5, 10), (6, 10))  # A (cat 1), B (cat 3)
    pred = row((9, 5), (0, 5), (8, 10))  # X on half of A; Y exactly B
    pq = single(gt, [seg(5, 1), seg(6, 3)], pred, [seg(9, 1), seg(8, 3)])
    cat1 = pq.per_category()[1]
    assert (cat1["TP"], cat1["FP"], cat1["FN"]) == (0, 1, 1)
    s = pq.summary()
    assert s["PQ"] == pytest.approx((0.0 + 1.0) / 2)
    assert (s["PQ_th"], s["PQ_st"], s["n_th"], s["n_st"]) == (0.0, 1.0, 1, 1)
    assert s["RQ"] == pytest.approx((0 / (0 + 0.5 + 0.5) + 1.0) / 2)
    assert s["SQ"] == pytest.approx((0.0 + 1.0) / 2)  # SQ of a category without TP is 0


def test_crowd_is_never_a_false_negative_and_covers_same_class_predictions():
    """C: crowd of cat 1 (10 px); B: cat 2 (10 px). Y (cat 1) = 6 px of C + 4 px of B:
    unmatched but 60 % on same-class crowd → not a FP; Z (cat 2) = the other 6 px of B → TP 0.6."""
    gt = row((7, 10), (6, 10))
    pred = row((0, 4), (3, 10), (4, 6))
    gt_segs = [seg(7, 1, crowd=1), seg(6, 2)]
    pq = single(gt, gt_segs, pred, [seg(3, 1), seg(4, 2)])
    s = pq.summary()
    assert (s["n"], s["PQ"]) == (1, pytest.approx(0.6))  # cat 1 has no TP/FP/FN: excluded
    assert pq.per_category()[1] == {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "TP": 0, "FP": 0, "FN": 0}
    # the same pixels predicted as another class are not covered by the crowd: a FP
    pq = single(gt, gt_segs, pred, [seg(3, 3), seg(4, 2)])
    assert pq.per_category()[3]["FP"] == 1
    assert pq.summary()["PQ"] == pytest.approx((0.6 + 0.0) / 2)
    # a crowd region may be matched by nothing: it is not a FN, and a pixel-perfect
    # same-class prediction of it is neither TP nor FP
    pq = single(gt, gt_segs, gt, gt_segs)
    assert (pq.per_category()[1]["TP"], pq.per_category()[1]["FN"], pq.per_category()[1]["FP"]) == (0, 0, 0)


@pytest.mark.parametrize("void_px, is_fp", [(5, True), (6, False)])
def test_unmatched_prediction_ignored_only_when_more_than_half_void(void_px, is_fp):
    gt = row((5, 10), (0, 10))  # A (cat 1) then VOID
    pred = row((0, void_px), (9, 10), (0, 10 - void_px))  # X: 10 − void_px px on A, void_px on VOID
    pq = single(gt, [seg(5, 1)], pred, [seg(9, 2)])  # other class: cannot match
    assert pq.per_category()[2]["FP"] == int(is_fp)
    assert pq.per_category()[1]["FN"] == 1


def test_categories_without_segments_are_excluded_and_split_by_isthing():
    gt = row((1, 10), (2, 10), (3, 10))  # cat 1 (thing), cat 3 (stuff), cat 4 (stuff)
    pred = row((1, 10), (2, 10), (3, 4), (0, 6))  # cat 1 and 3 perfect, cat 4 IoU 0.4
    pq = single(gt, [seg(1, 1), seg(2, 3), seg(3, 4)], pred, [seg(1, 1), seg(2, 3), seg(3, 4)])
    s = pq.summary()
    assert (s["n"], s["n_th"], s["n_st"]) == (3, 1, 2)  # cat 2 never occurs
    assert s["PQ"] == pytest.approx((1 + 1 + 0) / 3)
    assert s["PQ_th"] == 1.0 and s["PQ_st"] == pytest.approx(0.5)
    assert s["RQ_st"] == pytest.approx((1 + 0) / 2)  # cat 4: FN + FP → RQ 0
    assert (s["TP_th"], s["FP_th"], s["FN_th"]) == (1, 0, 0)
    assert (s["TP_st"], s["FP_st"], s["FN_st"]) == (1, 1, 1)  # cat 4's IoU 0.4: one FP and one FN
    assert (s["TP"], s["FP"], s["FN"]) == (2, 1, 1)


def test_sum_over_images_before_dividing():
    """TP/FP/FN/ΣIoU are summed per category over images, then divided (not per image)."""
    pq = PanopticQuality(CATEGORIES)
    pq.add(row((1, 10)), [seg(1, 1)], row((1, 10)), [seg(1, 1)])  # TP, IoU 1
    pq.add(row((1, 10)), [seg(1, 1)], row((1, 6), (0, 4)), [seg(1, 1)])  # TP, IoU 0.6
    pq.add(row((1, 10)), [seg(1, 1)], row((0, 10)), [])  # FN
    s = pq.summary()
    assert s["SQ"] == pytest.approx(1.6 / 2)
    assert s["RQ"] == pytest.approx(2 / (2 + 0.5))
    assert s["PQ"] == pytest.approx(1.6 / 2.5)
    assert pq.num_images == 3


def test_inconsistent_predictions_raise():
    gt, gt_segs = row((1, 10)), [seg(1, 1)]
    with pytest.raises(KeyError, match="not in segments_info"):
        single(gt, gt_segs, row((1, 5), (2, 5)), [seg(1, 1)])
    with pytest.raises(KeyError, match="not in the PNG"):
        single(gt, gt_segs, row((1, 10)), [seg(1, 1), seg(2, 1)])
    with pytest.raises(KeyError, match="unknown category_id 99"):
        single(gt, gt_segs, row((1, 10)), [seg(1, 99)])
    with pytest.raises(ValueError, match="differ in size"):
        single(gt, gt_segs, row((1, 11)), [seg(1, 1)])


def test_colour_coding_round_trip():
    ids = np.array([[0, 1, 255], [256, 65536 + 7, 256**3 - 1]], np.int32)
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb[1, 1].tolist() == [7, 0, 1]
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)


# -- the real sample against a per-segment loop ------------------------------------------------


def reference_stats(pairs, categories):
    """Per-category [ΣIoU, TP, FP, FN] by looping over segment pairs with boolean masks."""
    stats = defaultdict(lambda: [0.0, 0, 0, 0])
    for gt_ids, gt_segs, pred_ids, pred_segs in pairs:
        void = gt_ids == 0
        matched_gt, matched_pred = set(), set()
        for g in gt_segs:
            if g["iscrowd"]:
                continue
            G = gt_ids == g["id"]
            for p in pred_segs:
                if p["category_id"] != g["category_id"]:
                    continue
                P = pred_ids == p["id"]
                inter = np.count_nonzero(G & P)
                union = np.count_nonzero(G | (P & ~void))  # VOID part of P left out
                if inter and inter / union > 0.5:
                    stats[g["category_id"]][0] += inter / union
                    stats[g["category_id"]][1] += 1
                    matched_gt.add(g["id"])
                    matched_pred.add(p["id"])
        for g in gt_segs:
            if not g["iscrowd"] and g["id"] not in matched_gt:
                stats[g["category_id"]][3] += 1
        for p in pred_segs:
            if p["id"] in matched_pred:
                continue
            P = pred_ids == p["id"]
            crowd = np.zeros_like(void)
            for g in gt_segs:
                if g["iscrowd"] and g["category_id"] == p["category_id"]:
                    crowd |= gt_ids == g["id"]
            if np.count_nonzero(P & (void | crowd)) / np.count_nonzero(P) <= 0.5:
                stats[p["category_id"]][2] += 1
    out = {}
    for name, keep in (("", lambda c: True), ("_th", lambda c: c["isthing"] == 1), ("_st", lambda c: c["isthing"] == 0)):
        pq, sq, rq = [], [], []
        for c in categories:
            iou, tp, fp, fn = stats[c["id"]]
            if not keep(c) or tp + fp + fn == 0:
                continue
            pq.append(iou / (tp + fp / 2 + fn / 2))
            sq.append(iou / tp if tp else 0.0)
            rq.append(tp / (tp + fp / 2 + fn / 2))
        out["PQ" + name], out["SQ" + name], out["RQ" + name] = np.mean(pq), np.mean(sq), np.mean(rq)
        out["n" + name] = len(pq)
    return out


@pytest.fixture(scope="module")
def sample():
    with open(os.path.join(SAMPLE, "panoptic_examples.json")) as f:
        gt = json.load(f)
    with open(os.path.join(SAMPLE, "panoptic_coco_categories.json")) as f:
        categories = json.load(f)
    images = [read_id_map(os.path.join(SAMPLE, "panoptic", a["file_name"])) for a in gt["annotations"]]
    return gt, categories, images


def listed(ids, segments):
    present = set(np.unique(ids).tolist())
    return [s for s in segments if s["id"] in present]


def shifted(ids, segs, rng):
    dy, dx = rng.integers(-12, 13, 2)
    out = np.zeros_like(ids)
    h, w = ids.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = ids[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return out, listed(out, segs)


def eroded(ids, segs, rng):
    out = ids.copy()
    for s in segs:
        m = ids == s["id"]
        out[m & ~ndimage.binary_erosion(m, iterations=int(rng.integers(1, 6)))] = 0
    return out, listed(out, segs)


def dropped(ids, segs, rng):
    drop = {s["id"] for s in segs if rng.random() < 0.3}
    out = np.where(np.isin(ids, list(drop)), 0, ids)
    return out, [s for s in segs if s["id"] not in drop]


def merged(ids, segs, rng):
    """Merge every two consecutive segments of the same category (crowd included)."""
    out, keep, last = ids.copy(), [], {}
    for s in segs:
        c = s["category_id"]
        if c in last:
            out[ids == s["id"]] = last.pop(c)
        else:
            last[c] = s["id"]
            keep.append(s)
    return out, keep


def relabelled(ids, segs, rng):
    cats = [1, 8, 19, 37, 184, 187, 193, 125, 2]
    return ids, [dict(s, category_id=int(rng.choice(cats))) if rng.random() < 0.3 else s for s in segs]


def as_prediction(segs):
    return [{"id": s["id"], "category_id": s["category_id"]} for s in segs]  # no iscrowd in predictions


PERTURBATIONS = {"shifted": shifted, "eroded": eroded, "dropped": dropped, "merged": merged, "relabelled": relabelled}


def test_ground_truth_as_prediction_gives_one(sample):
    gt, categories, images = sample
    pairs = [(ids, a["segments_info"], ids, as_prediction(a["segments_info"])) for ids, a in zip(images, gt["annotations"])]
    s = evaluate_panoptic(pairs, categories).summary()
    for key in KEYS:
        assert s[key] == 1.0, key
    assert (s["n"], s["n_th"], s["n_st"]) == (8, 4, 4)


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_perturbed_predictions_match_the_definition(sample, name):
    gt, categories, images = sample
    rng = np.random.default_rng(sorted(PERTURBATIONS).index(name))
    pairs = []
    for ids, ann in zip(images, gt["annotations"]):
        pred, segs = PERTURBATIONS[name](ids, ann["segments_info"], rng)
        pairs.append((ids, ann["segments_info"], pred, as_prediction(segs)))
    ours = evaluate_panoptic(pairs, categories).summary()
    expected = reference_stats(pairs, categories)
    assert ours["PQ"] < 1.0
    for key in expected:
        assert ours[key] == pytest.approx(expected[key], abs=1e-12), key


def write_prediction(tmp_path, gt, images, rng):
    folder = tmp_path / "pred"
    folder.mkdir()
    annotations = []
    for ids, ann in zip(images, gt["annotations"]):
        pred, segs = eroded(*shifted(ids, ann["segments_info"], rng), rng)
        Image.fromarray(id_to_rgb(pred)).save(folder / ann["file_name"])
        annotations.append({"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": as_prediction(segs)})
    path = tmp_path / "pred.json"
    path.write_text(json.dumps({"annotations": annotations}))
    return path, folder


def test_folders_and_json(sample, tmp_path):
    gt, categories, images = sample
    pred_json, pred_folder = write_prediction(tmp_path, gt, images, np.random.default_rng(5))
    gt_json = os.path.join(SAMPLE, "panoptic_examples.json")
    pq = evaluate_panoptic_files(gt_json, pred_json, os.path.join(SAMPLE, "panoptic"), pred_folder)
    with open(pred_json) as f:
        preds = json.load(f)["annotations"]
    pairs = [
        (ids, a["segments_info"], read_id_map(pred_folder / p["file_name"]), p["segments_info"])
        for ids, a, p in zip(images, gt["annotations"], preds)
    ]
    expected = reference_stats(pairs, gt["categories"])
    for key in expected:
        assert pq.summary()[key] == pytest.approx(expected[key], abs=1e-12), key
    two = evaluate_panoptic_files(gt_json, pred_json, os.path.join(SAMPLE, "panoptic"), pred_folder, workers=2)
    assert two.summary() == pq.summary()
    missing = {"annotations": preds[:1]}
    with pytest.raises(KeyError, match="no prediction"):
        evaluate_panoptic_files(gt_json, missing, os.path.join(SAMPLE, "panoptic"), pred_folder)


def test_workers_never_fork(sample, tmp_path, monkeypatch):
    # A process that runs JAX must not fork (Python warns that it can deadlock): the
    # workers are threads.
    gt, _, images = sample
    pred_json, pred_folder = write_prediction(tmp_path, gt, images, np.random.default_rng(5))
    gt_json = os.path.join(SAMPLE, "panoptic_examples.json")
    one = evaluate_panoptic_files(gt_json, pred_json, os.path.join(SAMPLE, "panoptic"), pred_folder)

    def no_fork(*args, **kwargs):
        raise AssertionError("the panoptic evaluator started a process")

    monkeypatch.setattr(os, "fork", no_fork)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", no_fork)  # any start method
    two = evaluate_panoptic_files(gt_json, pred_json, os.path.join(SAMPLE, "panoptic"), pred_folder, workers=2)
    assert two.summary() == pytest.approx(one.summary(), abs=1e-12)


def test_command_prints_table_and_json(sample, tmp_path):
    gt, categories, images = sample
    pred_json, pred_folder = write_prediction(tmp_path, gt, images, np.random.default_rng(6))
    args = [
        sys.executable, "-m", "msvision.evaluation.panoptic",
        "--gt-json", os.path.join(SAMPLE, "panoptic_examples.json"),
        "--gt-folder", os.path.join(SAMPLE, "panoptic"),
        "--pred-json", str(pred_json), "--pred-folder", str(pred_folder),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    printed = subprocess.run(args + ["--json"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert printed.returncode == 0, printed.stderr
    summary = json.loads(printed.stdout)
    expected = evaluate_panoptic_files(
        os.path.join(SAMPLE, "panoptic_examples.json"), pred_json, os.path.join(SAMPLE, "panoptic"), pred_folder
    ).summary()
    assert set(KEYS) | {"n", "n_th", "n_st"} <= set(summary)
    for key in KEYS:
        assert 0.0 <= summary[key] <= 1.0
        assert summary[key] == pytest.approx(expected[key], abs=1e-12)
    table = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["|", "PQ", "SQ", "RQ", "N"]
    assert [line.split("|")[0].strip() for line in lines[2:5]] == ["All", "Things", "Stuff"]
    assert float(lines[2].split()[2]) == pytest.approx(100 * expected["PQ"], abs=0.05)


def test_png_reading_matches_colour_decoding(tmp_path):
    """The fast RGBX path of ``read_id_map`` equals R + 256·G + 256²·B of the decoded PNG,
    and a palette / RGBA image takes the plain path."""
    path = os.path.join(SAMPLE, "panoptic", "000000142238.png")
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    expected = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
    np.testing.assert_array_equal(read_id_map(path), expected)
    ids = np.array([[0, 5, 70000], [256**3 - 1, 3, 3]], np.int32)
    Image.fromarray(np.dstack([id_to_rgb(ids), np.full((2, 3), 200, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_id_map(tmp_path / "rgba.png"), ids)
