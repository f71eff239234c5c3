"""Mask boundaries, the AP^B* IoU and COCO-style Boundary AP against definitions and oracles."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from msvision.evaluation.boundary import (
    boundary_dilation,
    boundary_iou_matrix,
    boundary_mask_iou,
    erode_square,
    mask_to_boundary,
    rles_to_boundary_rles,
)
from msvision.evaluation.coco_boundary import coco_boundary_ap

THRESHOLDS = np.linspace(0.5, 0.95, 10)


def iterated_erosion_boundary(mask, d):
    """boundary-iou-api written out: pad with one ring of zeros, ``d`` times a 3×3 erosion
    (pixels beyond the padded array are ignored, as cv2's default erosion border),
    crop, subtract."""
    e = np.pad(mask.astype(bool), 1, constant_values=False)
    h, w = e.shape
    for _ in range(d):
        p = np.pad(e, 1, constant_values=True)  # out-of-array neighbours do not erode
        out = np.ones_like(e)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                out &= p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        e = out
    return mask.astype(bool) & ~e[1:-1, 1:-1]


def to_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def random_blobs(rng, h, w, n=3):
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), bool)
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(2, h / 3), rng.uniform(2, w / 3)
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


def test_boundary_dilation_is_two_percent_of_the_diagonal():
    assert boundary_dilation(480, 640) == 16  # 0.02 · 800
    assert boundary_dilation(100, 100) == 3  # 2.83 rounds to 3
    assert boundary_dilation(60, 80) == 2  # 0.02 · 100
    assert boundary_dilation(10, 10) == 1  # 0.28 rounds to 0, at least 1
    assert boundary_dilation(480, 640, 0.01) == 8


def test_square_boundary_is_a_ring_of_width_d():
    mask = np.zeros((100, 100), bool)  # d = 3
    mask[30:50, 40:60] = True
    boundary = mask_to_boundary(mask)
    inner = np.zeros_like(mask)
    inner[33:47, 43:57] = True
    np.testing.assert_array_equal(boundary, mask & ~inner)
    assert boundary.sum() == 20 * 20 - 14 * 14


def test_image_border_counts_as_boundary():
    mask = np.zeros((100, 100), bool)  # d = 3
    mask[0:30, 10:40] = True  # touches the top edge
    inner = np.zeros_like(mask)
    inner[3:27, 13:37] = True
    np.testing.assert_array_equal(mask_to_boundary(mask), mask & ~inner)
    full = np.ones((100, 100), bool)  # the whole image: a frame of width 3
    assert mask_to_boundary(full).sum() == 100 * 100 - 94 * 94


def test_empty_and_explicit_dilation():
    assert not mask_to_boundary(np.zeros((20, 30), bool)).any()
    mask = np.zeros((50, 50), bool)
    mask[10:40, 10:40] = True
    assert mask_to_boundary(mask, dilation=5).sum() == 30 * 30 - 20 * 20
    # d ≥ half the side: the boundary is the whole mask
    np.testing.assert_array_equal(mask_to_boundary(mask, dilation=15), mask)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 7, 8, 16])
def test_matches_iterated_3x3_erosion(d):
    rng = np.random.default_rng(d)
    for trial in range(4):
        h, w = rng.integers(20, 70, 2)
        mask = random_blobs(rng, h, w) if trial % 2 else rng.random((h, w)) < 0.7
        np.testing.assert_array_equal(mask_to_boundary(mask, dilation=d), iterated_erosion_boundary(mask, d))
        eroded = erode_square(mask, d)
        np.testing.assert_array_equal(mask & ~eroded, iterated_erosion_boundary(mask, d))


def test_matches_boundary_iou_api_with_cv2():
    """boundary-iou-api's ``mask_to_boundary`` (cv2.erode) as the oracle; cv2 comes with
    the ``lvis`` test dependency."""
    import cv2

    def api_boundary(mask, dilation_ratio=0.02):
        h, w = mask.shape
        d = max(1, int(round(dilation_ratio * np.sqrt(h**2 + w**2))))
        padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
        return mask - eroded

    rng = np.random.default_rng(0)
    for h, w in [(427, 640), (120, 90), (33, 47)]:
        mask = random_blobs(rng, h, w, n=4).astype(np.uint8)
        np.testing.assert_array_equal(mask_to_boundary(mask), api_boundary(mask).astype(bool))


def test_rle_boundaries_match_dense():
    rng = np.random.default_rng(1)
    masks = [random_blobs(rng, 80, 120) for _ in range(3)] + [np.zeros((80, 120), bool)]
    rles = rles_to_boundary_rles([to_rle(m) for m in masks])
    for m, rle in zip(masks, rles):
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), iterated_erosion_boundary(m, 3))


def test_boundary_mask_iou_is_the_minimum_and_mask_iou_for_crowd():
    h = w = 100  # d = 3
    gt = np.zeros((h, w), bool)
    gt[30:50, 30:50] = True
    dt = np.zeros((h, w), bool)
    dt[30:50, 32:52] = True  # shifted by 2 px
    mask_iou = (20 * 18) / (2 * 400 - 20 * 18)
    gb, db = iterated_erosion_boundary(gt, 3), iterated_erosion_boundary(dt, 3)
    b_iou = (gb & db).sum() / (gb | db).sum()
    assert b_iou < mask_iou
    rle_g, rle_d = to_rle(gt), to_rle(dt)
    bounds_g, bounds_d = rles_to_boundary_rles([rle_g]), rles_to_boundary_rles([rle_d])
    ious = boundary_mask_iou([rle_d], [rle_g, rle_g], [0, 1], bounds_d, bounds_g * 2)
    np.testing.assert_allclose(ious[0, 0], b_iou, rtol=1e-12)
    np.testing.assert_allclose(ious[0, 1], 360 / 400, rtol=1e-12)  # crowd: |P∩G| / |P|, mask only
    assert boundary_mask_iou([], [rle_g], [0], [], bounds_g).shape == (0, 1)


def test_boundary_iou_matrix_skips_only_pairs_that_cannot_match():
    rng = np.random.default_rng(7)
    gts = [random_blobs(rng, 60, 80, n=1) for _ in range(4)]
    dts = [np.roll(g, tuple(rng.integers(-6, 7, 2)), axis=(0, 1)) for g in gts] + [random_blobs(rng, 60, 80, 2)]
    dt_rles, gt_rles, crowd = [to_rle(m) for m in dts], [to_rle(m) for m in gts], [0, 0, 1, 0]
    full = boundary_mask_iou(dt_rles, gt_rles, crowd, rles_to_boundary_rles(dt_rles), rles_to_boundary_rles(gt_rles))
    np.testing.assert_array_equal(boundary_iou_matrix(dt_rles, gt_rles, crowd), full)
    lazy = boundary_iou_matrix(dt_rles, gt_rles, crowd, min_iou=0.5)
    np.testing.assert_array_equal(lazy[full >= 0.5], full[full >= 0.5])
    assert np.all(lazy[full < 0.5] < 0.5)
    assert np.any((full < lazy) & (lazy < 0.5))  # some skipped pairs keep their (larger) mask IoU


def _dataset(masks_per_image, categories=(1, 2), crowd=()):
    images, anns = [], []
    for i, masks in enumerate(masks_per_image):
        h, w = masks[0][1].shape
        images.append({"id": i + 1, "height": h, "width": w, "file_name": f"{i}.png"})
        for cat, m in masks:
            rle = to_rle(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": int(len(anns) + 1 in crowd),
                }
            )
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


def _segm_ap(gt_dict, results):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt_dict)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_coco_boundary_ap_single_pair_is_fraction_of_thresholds_passed():
    """One object, one detection: AP at a threshold is 1 if the IoU reaches it, else 0."""
    h = w = 100
    gt = np.zeros((h, w), bool)
    gt[20:70, 25:75] = True
    dt = np.zeros((h, w), bool)
    dt[21:71, 26:76] = True
    gb, db = iterated_erosion_boundary(gt, 3), iterated_erosion_boundary(dt, 3)
    iou = min((gt & dt).sum() / (gt | dt).sum(), (gb & db).sum() / (gb | db).sum())
    gt_dict = _dataset([[(1, gt)]], categories=(1,))
    results = [{"image_id": 1, "category_id": 1, "segmentation": to_rle(dt), "score": 0.9}]
    ap = coco_boundary_ap(gt_dict, results)
    assert ap["AP"] == pytest.approx(np.mean(iou >= THRESHOLDS))
    assert ap["AP50"] == pytest.approx(1.0 if iou >= 0.5 else 0.0)
    assert 0 < ap["AP"] < _segm_ap(gt_dict, results)[0]  # the boundary is stricter


def test_coco_boundary_ap_equals_mask_ap_when_the_band_covers_the_mask():
    """With d larger than any object the boundary is the whole mask: pycocotools'
    segm AP is the oracle, including crowd regions and several categories."""
    rng = np.random.default_rng(3)
    images, results = [], []
    for i in range(4):
        objs = [(int(rng.integers(1, 3)), random_blobs(rng, 60, 80, n=1)) for _ in range(4)]
        images.append(objs)
        for cat, m in objs:
            shifted = np.roll(m, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
            results.append({"image_id": i + 1, "category_id": cat, "segmentation": to_rle(shifted), "score": float(rng.random())})
        results.append({"image_id": i + 1, "category_id": 1, "segmentation": to_rle(random_blobs(rng, 60, 80, 1)), "score": float(rng.random())})
    gt_dict = _dataset(images, crowd=(3, 9))
    ours = coco_boundary_ap(gt_dict, results, dilation_ratio=10.0)
    np.testing.assert_allclose(list(ours.values()), _segm_ap(gt_dict, results), rtol=0, atol=1e-12)
    assert 0 < ours["AP"] < 1.0
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 1.0}
        for a in gt_dict["annotations"]
    ]
    assert coco_boundary_ap(gt_dict, perfect)["AP"] == pytest.approx(1.0)


def test_coco_evaluator_boundary_iou_type():
    """``CocoEvaluator(iou_types=("segm", "boundary"))`` gives the same numbers as the functions."""
    from msvision.evaluation.coco_eval import CocoEvaluator

    rng = np.random.default_rng(4)
    images, results = [], []
    for i in range(3):
        objs = [(1, random_blobs(rng, 50, 70, n=1)) for _ in range(3)]
        images.append(objs)
        for cat, m in objs:
            m = np.roll(m, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
            results.append({"image_id": i + 1, "category_id": cat, "segmentation": to_rle(m), "score": float(rng.random()), "bbox": [0, 0, 1, 1]})
    gt_dict = _dataset(images, categories=(1,))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt_dict)
        coco.createIndex()
    evaluator = CocoEvaluator(coco, iou_types=("segm", "boundary"))
    evaluator.add(copy.deepcopy(results))
    metrics = evaluator.evaluate()
    expected = coco_boundary_ap(gt_dict, results)
    for name, value in expected.items():
        assert metrics[f"boundary/{name}"] == pytest.approx(value, abs=1e-12)
    assert metrics["boundary/AP"] < metrics["segm/AP"]
    np.testing.assert_allclose([metrics[f"segm/{n}"] for n in expected], _segm_ap(gt_dict, results), atol=1e-12)
