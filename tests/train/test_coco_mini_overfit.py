"""Real images end to end: the quickstart recipe overfits 16 COCO training images.

``configs/quickstart_coco_mini.py`` on ``tests/data/coco_mini`` (16 real COCO
images of 333×500 to 640×621 px, 146 objects, a crowd region, COCO's 80
categories with ids up to 90) trains and is evaluated on the same images: this
exercises JPEG decoding, crowd regions, the category mapping and varied image
sizes (three buckets), which the synthetic shapes do not. Then the trained model
is restored for prediction from the work directory alone.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from msvision import config_sections
from msvision.inference import Predictor
from msvision.train import loop

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(HERE, "..", "data", "coco_mini")
NUM_STEPS = 300


@pytest.mark.slow
def test_quickstart_overfits_coco_mini(tmp_path):
    config = config_sections.load_config(
        f"{os.path.join(REPOSITORY, 'configs', 'quickstart_coco_mini.py')}:{DATA}",
        [f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every=0",
         "--config.eval.visualize=2"])
    workdir = str(tmp_path / "run")
    final = loop.train(config, workdir)
    # A model that memorised its 16 training images: bbox AP 0.768 on 2026-12-01 (2-core CPU, 300 steps).
    assert final["eval/bbox/AP"] > 0.5, final
    assert final["perf/compiled_train_shapes"] <= 3  # the config's three buckets

    # The class list went to the work directory: COCO's 80 categories with their own ids.
    with open(os.path.join(workdir, "dataset.json")) as f:
        classes = json.load(f)
    with open(os.path.join(DATA, "annotations", "instances_train2017.json")) as f:
        categories = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    assert classes["label_to_category"] == [c["id"] for c in categories]

    # Restored for prediction from the work directory alone (the annotations are not read).
    with config.unlocked():
        config.data.train.annotations = config.data.val.annotations = str(tmp_path / "absent.json")
    predictor = Predictor.from_workdir(config, workdir, score_threshold=0.5)
    with open(os.path.join(workdir, "eval", f"results_{NUM_STEPS}.json")) as f:
        results = json.load(f)
    path = os.path.join(DATA, "train2017", sorted(os.listdir(os.path.join(DATA, "train2017")))[0])
    photo = Image.open(path).convert("RGB")
    detections = predictor(np.asarray(photo))
    assert detections, "the memorised image has confident detections"
    # The same detections as evaluation wrote (same resize and model; evaluation ran batches of 8
    # in another bucket), up to float32 rounding.
    image_id = int(os.path.splitext(os.path.basename(path))[0])
    evaluated = [r for r in results if r["image_id"] == image_id]
    assert sum(r["score"] >= 0.501 for r in evaluated) <= len(detections) <= sum(r["score"] >= 0.499 for r in evaluated)
    for det in detections:
        assert any(r["category_id"] == det["category_id"] and abs(r["score"] - det["score"]) < 1e-3
                   and np.abs(np.asarray(r["bbox"]) - det["bbox"]).max() < 0.5 for r in evaluated), det
    # Its 2x upscaled copy (resized back down by the predictor: slightly different pixels)
    # gives the same confident detections, boxes scaled by 2 within two pixels.
    upscaled = predictor(np.asarray(photo.resize((2 * photo.width, 2 * photo.height), Image.BICUBIC)))
    for det in detections:
        box = 2 * np.asarray(det["bbox"])
        assert any(d["category_id"] == det["category_id"] and np.abs(np.asarray(d["bbox"]) - box).max() <= 2.0
                   for d in upscaled), (det, upscaled)

