"""Panoptic predictions: the COCO-instances view of a panoptic split against panopticapi's
converter output, and the writer (files, box scaling to the network input, PQ)."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from msvision.evaluation.panoptic import id_to_rgb, read_id_map
from msvision.evaluation.panoptic_postprocess import PanopticPostProcess
from msvision.evaluation.panoptic_predictions import (PanopticPredictionWriter, panoptic_to_coco_instances,
                                                      single_category_baseline)

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "data", "coco_panoptic_sample")


def test_coco_instances_of_a_panoptic_split_match_panopticapi_converter():
    """instances_from_panoptic.json is panopticapi's converter output (things_only=False)."""
    coco = panoptic_to_coco_instances(os.path.join(SAMPLE, "panoptic_examples.json"),
                                      os.path.join(SAMPLE, "panoptic"))
    with open(os.path.join(SAMPLE, "instances_from_panoptic.json")) as f:
        reference = json.load(f)
    ours = coco.dataset["annotations"]
    assert len(ours) == len(reference["annotations"]) == 50
    key = lambda a: (a["image_id"], a["category_id"], tuple(np.round(a["bbox"], 3)))  # noqa: E731
    by_key = {key(a): a for a in reference["annotations"]}
    for a in ours:
        b = by_key[key(a)]
        assert a["iscrowd"] == b["iscrowd"] and a["area"] == b["area"]
        np.testing.assert_array_equal(mask_utils.decode(a["segmentation"]), mask_utils.decode(b["segmentation"]))
    assert len(coco.getCatIds()) == 133


@pytest.fixture
def one_image_gt(tmp_path):
    """A 60×80 image: a thing (category 1) at rows 10–29, columns 20–49 on stuff (category 5)."""
    ids = np.full((60, 80), 2, np.int32)
    ids[10:30, 20:50] = 1
    (tmp_path / "gt").mkdir()
    Image.fromarray(id_to_rgb(ids)).save(tmp_path / "gt" / "a.png")
    gt = {"images": [{"id": 7, "file_name": "a.jpg", "height": 60, "width": 80}],
          "annotations": [{"image_id": 7, "file_name": "a.png", "segments_info": [
              {"id": 1, "category_id": 1, "iscrowd": 0, "bbox": [20, 10, 30, 20], "area": 600},
              {"id": 2, "category_id": 5, "iscrowd": 0, "bbox": [0, 0, 80, 60], "area": 4200}]}],
          "categories": [{"id": 1, "name": "thing", "isthing": 1}, {"id": 5, "name": "stuff", "isthing": 0}]}
    with open(tmp_path / "gt.json", "w") as f:
        json.dump(gt, f)
    return tmp_path, ids


def test_writer_scales_boxes_to_the_input_and_scores_pq(one_image_gt):
    """Mask boxes come in original pixels; the steps run at the 2× network input (min_area in
    input pixels: the thing covers 2400 px there, 600 at the original size); the output is at
    the original size. Each grid has one cell per input pixel (an exact paste). The stuff is
    predicted over the whole image; the thing wins its pixels (higher s·p), so the stuff keeps
    16800 / 19200 input px of its mask: IoU 0.875 ≥ 0.6, kept."""
    tmp_path, gt_ids = one_image_gt
    writer = PanopticPredictionWriter(str(tmp_path / "gt.json"), str(tmp_path / "gt"), str(tmp_path / "pred"),
                                      label_to_category=[1, 5], postprocess=PanopticPostProcess(min_area=2000))
    probs = [np.ones((40, 60), np.float32), np.ones((120, 160), np.float32)]
    boxes = np.array([[20, 10, 50, 30], [0, 0, 80, 60]], np.float32)
    ids, segments = writer.add(7, probs, boxes, np.array([0.9, 0.8]), np.array([0, 1]), (120, 160), (60, 80))
    assert [s["category_id"] for s in segments] == [1, 5] and [s["area"] for s in segments] == [600, 4200]
    np.testing.assert_array_equal(ids, gt_ids)
    summary = writer.finish()
    assert summary["PQ"] == pytest.approx(1.0) and summary["n_th"] == 1 and summary["n_st"] == 1
    np.testing.assert_array_equal(read_id_map(str(tmp_path / "pred" / "a.png")), gt_ids)
    with open(tmp_path / "pred.json") as f:
        written = json.load(f)
    assert written["annotations"][0]["segments_info"] == segments
    # At the original size the thing (600 px) would be under min_area: counted at the input.
    writer = PanopticPredictionWriter(str(tmp_path / "gt.json"), str(tmp_path / "gt"), str(tmp_path / "pred2"),
                                      label_to_category=[1, 5], postprocess=PanopticPostProcess(min_area=2000))
    _, segments = writer.add(7, probs, boxes, np.array([0.9, 0.8]), np.array([0, 1]), (60, 80), (60, 80))
    assert [s["category_id"] for s in segments] == [5]


def test_writer_rejects_categories_outside_the_panoptic_ones(one_image_gt):
    tmp_path, _ = one_image_gt
    with pytest.raises(KeyError, match="not panoptic categories"):
        PanopticPredictionWriter(str(tmp_path / "gt.json"), str(tmp_path / "gt"), str(tmp_path / "p"), [1, 9])


def test_single_category_baseline(one_image_gt):
    """All pixels "stuff": IoU with the stuff segment 4200 / 4800 = 0.875 (TP), the thing a FN;
    PQ averages the stuff 0.875 and the thing 0."""
    tmp_path, _ = one_image_gt
    summary = single_category_baseline(str(tmp_path / "gt.json"), str(tmp_path / "gt"))
    assert summary["category_id"] == 5
    assert summary["PQ_st"] == pytest.approx(0.875) and summary["PQ_th"] == 0.0
    assert summary["PQ"] == pytest.approx(0.875 / 2)
