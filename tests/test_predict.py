"""Prediction from a work directory: JSON schema, category mapping, original-pixel boxes,
batch/bucket independence, unreadable files, pictures (``msvision.predict``)."""

import dataclasses
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import inference_helpers
from inference_helpers import CATEGORY_IDS, CLASS_NAMES, CONFIG_OVERRIDES, assert_same_detections, coco_mini_images
from msvision import predict as predict_cli
from msvision.data.classes import ClassList, read_class_list
from msvision.data.image_files import list_image_files
from msvision.inference import Predictor
from msvision.train import data_setup


def _read_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_predictions_json_pictures_and_skipped_files(tmp_path, inference_workdir, live_predictor, capsys):
    config_arg, workdir, _ = inference_workdir
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    photos = coco_mini_images(3)
    shutil.copy(photos[0], inputs / "b.jpg")
    shutil.copy(photos[1], inputs / "sub" / "c.JPG")  # extensions match in any case
    single = tmp_path / "single.jpg"
    shutil.copy(photos[2], single)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 300, 4), np.uint8), "RGBA").save(inputs / "a.png")  # RGBA, extreme shape
    tiny = tmp_path / "tiny.png"
    Image.fromarray(rng.integers(0, 255, (5, 7, 3), np.uint8)).save(tiny)
    (inputs / "broken.jpg").write_bytes(b"not an image at all")
    (inputs / "truncated.jpg").write_bytes(open(photos[0], "rb").read()[:3000])  # header reads, decoding fails
    (inputs / "notes.txt").write_text("ignored: not an image extension")
    out = tmp_path / "out"

    # Batches of 3 (the second one padded) in a 256x256 bucket, where live_predictor runs one image at a
    # time in 128x128: every layer is padding-aware, so the detections must not change.
    code = predict_cli.main([f"--config={config_arg}", f"--workdir={workdir}", str(inputs), str(single),
                             str(tmp_path / "missing.jpg"), str(tiny), "--out", str(out), "--batch-size", "3",
                             "--score-threshold", "0", "--config.data.buckets=((256, 256),)", *CONFIG_OVERRIDES])
    assert code == 0
    stderr = capsys.readouterr().err
    predictions = json.loads((out / "predictions.json").read_text())
    summary = json.loads((out / "summary.json").read_text())

    expected = [inputs / "a.png", inputs / "b.jpg", inputs / "sub" / "c.JPG", single, tiny]  # walk, then argv order
    assert [p["file_name"] for p in predictions] == [str(p) for p in expected]
    skipped = {os.path.basename(s["file_name"]): s["error"] for s in summary["skipped"]}
    assert set(skipped) == {"broken.jpg", "truncated.jpg", "missing.jpg"}
    assert "decode" in skipped["truncated.jpg"] and "no such file" in skipped["missing.jpg"]
    for name in skipped:
        assert name in stderr
    assert summary["num_images"] == 5
    assert summary["compiled_shapes"] == [[3, 256, 256, 3]]  # every image fits the one bucket
    # A detector without a segmentation head: no mask keys (below), no panoptic folder or mask threshold.
    assert "mask_threshold" not in summary and not (out / "panoptic").exists()

    for entry, path in zip(predictions, expected):
        image = _read_rgb(path)
        assert set(entry) == {"file_name", "width", "height", "detections", "picture"}
        assert (entry["height"], entry["width"]) == image.shape[:2]
        assert len(entry["detections"]) == 20  # head.inference.max_detections; the head keeps every score here
        scores = [d["score"] for d in entry["detections"]]
        assert scores == sorted(scores, reverse=True)
        for det in entry["detections"]:
            assert set(det) == {"bbox", "score", "category_id", "category"}
            x, y, w, h = det["bbox"]
            assert 0 <= x and 0 <= y and w >= 0 and h >= 0
            assert x + w <= entry["width"] + 0.01 and y + h <= entry["height"] + 0.01
            # category mapping: the dataset's own (non-contiguous) id and its name
            assert det["category"] == CLASS_NAMES[CATEGORY_IDS.index(det["category_id"])]
        assert_same_detections(live_predictor(image), entry["detections"], box_atol=0.05, score_atol=1e-3)
        # The image with boxes drawn; small images enlarged by an integer factor (visualize.draw_detections).
        picture = _read_rgb(out / entry["picture"])
        scale = picture.shape[0] // image.shape[0]
        assert scale >= 1 and picture.shape == (image.shape[0] * scale, image.shape[1] * scale, 3)
        assert (scale > 1) == (max(image.shape[:2]) < 640)
        enlarged = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        assert np.abs(picture.astype(int) - enlarged).max() > 100
    assert len({p["picture"] for p in predictions}) == 5


def test_photo_stored_sideways_is_predicted_as_people_see_it(tmp_path, live_predictor):
    # EXIF orientation 6 (a phone held upright): stored 64 wide x 48 high, seen 48 wide x 64 high.
    stored = np.asarray(Image.open(coco_mini_images(1)[0]).convert("RGB").resize((64, 48), Image.BILINEAR))
    exif = Image.Exif()
    exif[0x0112] = 6
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(stored).save(folder / "phone.jpg", quality=100, exif=exif.tobytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    summary = live_predictor.predict_files([str(folder)], str(tmp_path / "out"), visualize=False, progress=False)
    (entry,) = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert (entry["width"], entry["height"]) == (48, 64)
    with Image.open(folder / "phone.jpg") as raw:  # what a viewer shows: the stored pixels turned clockwise
        seen = np.rot90(np.asarray(raw.convert("RGB")), -1)
    assert_same_detections(live_predictor(np.ascontiguousarray(seen)), entry["detections"])
    # Every input is accounted for: predicted, or skipped with the reason.
    assert summary["num_images"] + len(summary["skipped"]) == 2
    assert summary["skipped"] == [{"file_name": str(folder / "broken.png"), "error": "not an image file Pillow can read"}]


def test_boxes_are_in_original_pixels(live_predictor):
    # A 48x64 image is resized to the network's 96x128 with PIL bilinear; its 2x copy made the same
    # way needs no resizing: the network sees the same pixels, and the boxes must scale exactly by 2.
    photo = Image.open(coco_mini_images(1)[0]).convert("RGB")
    small = photo.resize((64, 48), Image.BILINEAR)
    double = small.resize((128, 96), Image.BILINEAR)
    assert live_predictor.preprocessing.network_size((48, 64)) == (96, 128)
    a, b = live_predictor(np.asarray(small)), live_predictor(np.asarray(double))
    assert_same_detections(a, b, box_scale=2.0, box_atol=0.03)
    # (A real 2x upscale, whose resized input differs slightly, is checked with a trained model
    # in tests/train/test_coco_mini_overfit.py: these random weights are not robust to it.)


def test_bucket_choice(live_predictor):
    # (Detections do not depend on the bucket or the batch: see the CLI test.)
    small = dataclasses.replace(live_predictor.preprocessing, buckets=((64, 64),))
    assert small.bucket([(96, 128)]) == (128, 128) and small.bucket([(64, 20)]) == (64, 64)
    # No bucket holds the image: one is made, rounded up to the bucket divisor.
    fixed = dataclasses.replace(small, allow_new_buckets=False)
    assert fixed.bucket([(96, 128)]) == (64, 64)  # exported models shrink the image instead
    # DETR's rounding gives 16x129 for 37x300 (shortest 96, longest <= 128): capped to 128.
    assert live_predictor.preprocessing.network_size((37, 300)) == (16, 128)


def test_array_inputs(live_predictor):
    gray = np.asarray(Image.open(coco_mini_images(1)[0]).convert("L"))
    as_rgb = np.repeat(gray[..., None], 3, axis=2)
    assert_same_detections(live_predictor(gray), live_predictor(as_rgb), box_atol=0.0, score_atol=0.0)
    with pytest.raises(TypeError):
        live_predictor(as_rgb.astype(np.float32))
    with pytest.raises(ValueError):
        live_predictor(np.zeros((0, 10, 3), np.uint8))
    strict = Predictor(live_predictor.detect, live_predictor.classes, live_predictor.preprocessing,
                       score_threshold=0.9)
    result = strict(as_rgb)
    assert all(d["score"] >= 0.9 for d in result)
    assert len(result) == sum(d["score"] >= 0.9 for d in live_predictor(as_rgb))
    # No segmentation head: asking for masks changes nothing (backward compatible outputs).
    for masks in ("rle", "array"):
        assert all(set(d) == {"bbox", "score", "category_id", "category"} for d in live_predictor(as_rgb, masks=masks))
    with pytest.raises(ValueError, match="not a panoptic predictor"):
        live_predictor.panoptic_segmentation(as_rgb)


def test_class_list_from_dataset_json_only(tmp_path, inference_workdir, capsys):
    classes = ClassList(("x", "y"), (5, 2))
    data_setup.save_dataset_file(data_setup.DatasetInfo(classes, 7, None), str(tmp_path))
    assert read_class_list(str(tmp_path)) == classes
    # A work directory without dataset.json is an error naming the file, even when the config's
    # training annotations exist (they are never read instead).
    config_arg, workdir, _ = inference_workdir
    bare = tmp_path / "bare"
    shutil.copytree(os.path.join(workdir, "checkpoints"), bare / "checkpoints")
    config = inference_helpers.tiny_inference_config(str(tmp_path / "none"))
    with config.unlocked():
        config.data.synthetic.enabled = False
        config.data.train.annotations = str(inference_helpers.COCO_MINI / "annotations" / "instances_train2017.json")
        config.data.train.images = str(inference_helpers.COCO_MINI / "train2017")
    with pytest.raises(FileNotFoundError, match=re.escape(str(bare / "dataset.json"))):
        Predictor.from_workdir(config, str(bare))
    code = predict_cli.main([f"--config={config_arg}", f"--workdir={bare}", str(tmp_path), "--out",
                             str(tmp_path / "out"), *CONFIG_OVERRIDES])
    assert code == 2 and str(bare / "dataset.json") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_list_image_files(tmp_path):
    (tmp_path / "d" / "z").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("d/b.PNG", "d/a.jpeg", "d/z/c.webp", "d/readme.md", "loose.dat"):
        (tmp_path / name).write_bytes(b"")
    paths, missing = list_image_files([str(tmp_path / "d"), str(tmp_path / "loose.dat"), str(tmp_path / "d" / "a.jpeg"),
                                       str(tmp_path / "empty"), str(tmp_path / "nope")])
    names = [os.path.relpath(p, tmp_path) for p in paths]
    assert names == ["d/a.jpeg", "d/b.PNG", "d/z/c.webp", "loose.dat"]  # a file is taken whatever its extension
    assert [os.path.basename(m["file_name"]) for m in missing] == ["empty", "nope"]
