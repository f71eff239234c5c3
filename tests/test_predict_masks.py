"""Masks in ``msvision.predict`` (tiny FQDet + EffSeg, random weights): the COCO RLEs of
``predictions.json`` are evaluation's pasted masks at the image file's size, and the array API
gives the same masks (the exported function: ``test_export_masks.py``; a detector without a
segmentation head writes no mask keys: ``test_predict.py``)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from inference_helpers import CATEGORY_IDS, coco_mini_images
from msvision import predict as predict_cli
from msvision.evaluation.masks import detection_image_masks
from msvision.inference import Predictor, pad_images
from msvision.structures import Detections

DETECTION_KEYS = ("boxes", "scores", "labels", "valid", "masks", "mask_boxes")


def _read_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _model_output(predictor, image: np.ndarray) -> tuple[dict, np.ndarray]:
    """The raw arrays of ``predictor.detect`` for one image (a batch of 1 in the config's bucket,
    as the CLI runs it by default) and the batch's ``orig_sizes [1, 2]``."""
    batch = pad_images([predictor.preprocessing.resize(image)], (128, 128))
    out = predictor.detect(batch.images, batch.image_sizes, batch.orig_sizes)
    return {k: np.asarray(out[k]) for k in DETECTION_KEYS}, np.asarray(batch.orig_sizes)


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_cli_rles_are_evaluations_masks_at_the_file_size(tmp_path, effseg_workdir, effseg_predictor):
    config_arg, workdir, _ = effseg_workdir
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(coco_mini_images(1)[0], inputs / "photo.jpg")  # 426x640 -> 86x128 in the 128x128 bucket
    photo = Image.open(coco_mini_images(2)[1]).convert("RGB")
    photo.resize((45, 61), Image.BILINEAR).save(inputs / "small.png")  # 61x45 -> 128x94 (enlarged)
    out = tmp_path / "out"
    assert predict_cli.main([f"--config={config_arg}", f"--workdir={workdir}", str(inputs), "--out", str(out),
                             "--score-threshold", "0"]) == 0
    predictions = json.loads((out / "predictions.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert [e["file_name"].rsplit("/", 1)[1] for e in predictions] == ["photo.jpg", "small.png"]
    assert summary["mask_threshold"] == 0.5 and summary["compiled_shapes"] == [[1, 128, 128, 3]]
    areas = []
    for entry in predictions:
        image = _read_rgb(entry["file_name"])
        h, w = image.shape[:2]
        assert (entry["height"], entry["width"]) == (h, w)
        assert effseg_predictor.preprocessing.network_size((h, w)) != (128, 128)  # smaller than the bucket
        # What evaluation writes to results_<step>.json for the same model output: masks pasted at the
        # original size (threshold 0.5), one per valid detection, in detection order.
        raw, orig_sizes = _model_output(effseg_predictor, image)
        expected = detection_image_masks(Detections(**raw), orig_sizes)[0]
        valid = np.flatnonzero(raw["valid"][0])
        assert len(entry["detections"]) == len(valid) == 20
        for det, k in zip(entry["detections"], valid):
            assert set(det) == {"bbox", "score", "category_id", "category", "segmentation", "area"}
            assert det["category_id"] in CATEGORY_IDS
            assert det["segmentation"]["size"] == [h, w] and isinstance(det["segmentation"]["counts"], str)
            mask = _decode(det["segmentation"])
            np.testing.assert_array_equal(mask, expected[k])
            assert det["area"] == int(expected[k].sum()) == int(mask_utils.area(
                {"size": [h, w], "counts": det["segmentation"]["counts"].encode()}))
            areas.append(det["area"] / (h * w))
        assert (out / entry["picture"]).is_file()
    assert min(areas) < 0.5 and max(areas) > 0.01  # the random model's masks are neither all empty nor full


def test_array_masks_and_threshold(effseg_predictor):
    image = _read_rgb(coco_mini_images(3)[2])
    as_rle = effseg_predictor(image)
    as_array = effseg_predictor(image, masks="array")
    assert len(as_rle) == len(as_array) == 20
    for a, b in zip(as_rle, as_array):
        assert "segmentation" not in b and set(b) == set(a) - {"segmentation"} | {"mask"}
        assert b["mask"].dtype == bool and b["mask"].shape == image.shape[:2]
        np.testing.assert_array_equal(_decode(a["segmentation"]), b["mask"])
        assert a["area"] == b["area"] == int(b["mask"].sum())
    assert all(set(d) == {"bbox", "score", "category_id", "category"} for d in effseg_predictor(image, masks="none"))
    with pytest.raises(ValueError, match="masks"):
        effseg_predictor(image, masks="png")
    # A higher mask threshold keeps a subset of every mask's pixels (the same detections).
    strict = Predictor(effseg_predictor.detect, effseg_predictor.classes, effseg_predictor.preprocessing,
                       score_threshold=0.0, mask_threshold=0.7)
    shrunk = 0
    for a, b in zip(as_array, strict(image, masks="array")):
        assert a["bbox"] == b["bbox"]
        assert not (b["mask"] & ~a["mask"]).any()
        shrunk += b["area"] < a["area"]
    assert shrunk > 0
