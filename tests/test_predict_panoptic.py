"""Panoptic configs in ``msvision.predict`` (tiny FQDet + EffSeg on the panoptic class list, random
weights): COCO panoptic PNGs whose segment ids match ``segments_info``, the dataset's category
ids, the same segmentation evaluation writes for the model output; ``isthing`` from
``dataset.json``; the export carries both."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import inference_helpers
from inference_helpers import (PANOPTIC_CATEGORY_IDS, PANOPTIC_CLASS_NAMES, PANOPTIC_IS_THING,
                               TINY_PANOPTIC_CONFIG, coco_mini_images)
from msvision import export as export_cli
from msvision import predict as predict_cli
from msvision.cli import InputError
from msvision.data.classes import ClassList, read_class_list
from msvision.evaluation.panoptic import read_id_map
from msvision.evaluation.panoptic_postprocess import PanopticPostProcess
from msvision.evaluation.panoptic_predictions import PanopticPredictionWriter
from msvision.inference import Predictor, pad_images
from msvision.inference.panoptic import require_isthing


@pytest.fixture(scope="module")
def panoptic_workdir(tmp_path_factory):
    return inference_helpers.make_inference_workdir(
        tmp_path_factory.mktemp("panoptic"), TINY_PANOPTIC_CONFIG, (), PANOPTIC_CLASS_NAMES, PANOPTIC_CATEGORY_IDS,
        PANOPTIC_IS_THING, seed=4)


def _read_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_writes_panoptic_pngs_matching_segments_info(tmp_path, panoptic_workdir):
    config_arg, workdir, data_root = panoptic_workdir
    with open(f"{workdir}/dataset.json") as f:  # written as train.py does for a panoptic source
        assert json.load(f)["label_is_thing"] == list(PANOPTIC_IS_THING)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(coco_mini_images(1)[0], inputs / "photo.jpg")  # 426x640
    Image.open(coco_mini_images(2)[1]).convert("RGB").resize((45, 61), Image.BILINEAR).save(inputs / "photo.png")
    out = tmp_path / "out"
    assert predict_cli.main([f"--config={config_arg}", f"--workdir={workdir}", str(inputs), "--out", str(out)]) == 0
    predictions = json.loads((out / "predictions.json").read_text())
    assert [e["panoptic"]["file_name"] for e in predictions] == ["photo.png", "photo_1.png"]  # unique names

    # Evaluation's writer on the same model output (a ground truth with the categories only).
    config = inference_helpers.tiny_inference_config(data_root, TINY_PANOPTIC_CONFIG, ())
    categories = [{"id": c, "name": n, "isthing": int(t)}
                  for c, n, t in zip(PANOPTIC_CATEGORY_IDS, PANOPTIC_CLASS_NAMES, PANOPTIC_IS_THING)]
    (tmp_path / "gt.json").write_text(json.dumps({"categories": categories, "annotations": []}))
    writer = PanopticPredictionWriter(str(tmp_path / "gt.json"), "", str(tmp_path / "eval_pngs"),
                                      PANOPTIC_CATEGORY_IDS, PanopticPostProcess(**config.eval.panoptic.to_dict()))
    predictor = Predictor.from_workdir(config, workdir)
    assert predictor.panoptic.min_area == 4 and predictor.panoptic.score_threshold == 0.0  # eval.panoptic
    is_thing = dict(zip(PANOPTIC_CATEGORY_IDS, PANOPTIC_IS_THING))
    num_segments = 0
    for image_id, entry in enumerate(predictions):
        image = _read_rgb(entry["file_name"])
        ids = read_id_map(str(out / "panoptic" / entry["panoptic"]["file_name"]))
        assert ids.shape == image.shape[:2]
        segments = entry["panoptic"]["segments_info"]
        num_segments += len(segments)
        # Every id of the PNG is listed, and every listed segment has its area's pixels in the PNG.
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in segments}
        assert len({s["id"] for s in segments}) == len(segments)
        for s in segments:
            pixels = ids == s["id"]
            assert s["area"] == int(pixels.sum()) > 0
            ys, xs = np.nonzero(pixels)
            assert s["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                 int(ys.max() - ys.min() + 1)]
            assert s["category_id"] in PANOPTIC_CATEGORY_IDS and s["isthing"] == int(is_thing[s["category_id"]])
        stuff = [s["category_id"] for s in segments if not s["isthing"]]
        assert len(stuff) == len(set(stuff))  # merge_stuff: one segment per stuff category
        assert (out / entry["picture"]).is_file()

        batch = pad_images([predictor.preprocessing.resize(image)], (128, 128))
        raw = predictor.detect(batch.images, batch.image_sizes, batch.orig_sizes)
        v = np.asarray(raw["valid"][0], bool)
        expected_ids, expected_segments = writer.add(image_id, raw["masks"][0][v], raw["mask_boxes"][0][v],
                                                     raw["scores"][0][v], raw["labels"][0][v], batch.image_sizes[0],
                                                     batch.orig_sizes[0])
        np.testing.assert_array_equal(ids, expected_ids)
        assert segments == json.loads(json.dumps(expected_segments))
        # The Python API gives the same map.
        api_ids, api_segments = predictor.panoptic_segmentation(image)
        np.testing.assert_array_equal(api_ids, ids)
        assert api_segments == expected_segments
    assert num_segments > 0

    # The export carries the class list with isthing and the config's panoptic settings.
    path = tmp_path / "panoptic.jaxexport"
    assert export_cli.main([f"--config={config_arg}", f"--workdir={workdir}", "--out", str(path)]) == 0
    exported = Predictor.from_exported(str(path))
    assert exported.classes == predictor.classes and exported.panoptic == predictor.panoptic


def test_a_panoptic_config_needs_isthing_from_the_class_list(tmp_path, panoptic_workdir, capsys):
    classes = ClassList(("cat", "sky"), (17, 187))
    with pytest.raises(InputError, match=re.escape("run/dataset.json") + ".*label_is_thing"):
        require_isthing(classes, "run/dataset.json")
    saved = ClassList(("cat", "sky"), (17, 187), (True, False))
    assert require_isthing(saved, "run/dataset.json") is saved
    with pytest.raises(ValueError, match="label_is_thing"):
        Predictor(lambda *a: {}, classes, None, panoptic=PanopticPostProcess())
    # A panoptic work directory whose dataset.json has no isthing: one line naming the file.
    config_arg, workdir, _ = panoptic_workdir
    bare = tmp_path / "run"
    shutil.copytree(f"{workdir}/checkpoints", bare / "checkpoints")
    saved = json.loads(open(f"{workdir}/dataset.json").read())
    del saved["label_is_thing"]
    (bare / "dataset.json").write_text(json.dumps(saved))
    assert predict_cli.main([f"--config={config_arg}", f"--workdir={bare}", str(tmp_path), "--out",
                             str(tmp_path / "out")]) == 2
    assert str(bare / "dataset.json") in capsys.readouterr().err


def test_train_writes_isthing_of_a_panoptic_source(tmp_path):
    # save_dataset_file as train.py calls it, on a real COCO panoptic source (133 categories).
    from msvision.data.panoptic import PanopticSource
    from msvision.train import data_setup

    sample = inference_helpers.TESTS / "data" / "coco_panoptic_sample"
    source = PanopticSource(sample / "panoptic_examples.json", sample / "panoptic", sample / "images")
    data_setup.save_dataset_file(data_setup.DatasetInfo(source.classes, len(source), None, source), str(tmp_path))
    classes = read_class_list(str(tmp_path))
    with open(sample / "panoptic_examples.json") as f:
        isthing = {c["id"]: bool(c["isthing"]) for c in json.load(f)["categories"]}
    assert len(classes.label_is_thing) == 133 and 0 < sum(classes.label_is_thing) < 133
    assert classes.label_is_thing == tuple(isthing[c] for c in classes.label_to_category)
