"""eval.py's failure modes: no checkpoint fails at once, naming the directory; evaluation
metadata comes from the run (``dataset.json``) or the validation split, never from the
training annotations."""

import json
import os
import pathlib
import subprocess
import sys
import time

from msvision.data.classes import ClassList
from msvision.data.pipeline import default_data_config
from msvision.train import data_setup

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "coco_panoptic_sample"


def test_eval_without_checkpoint_fails_at_once_naming_the_directory(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"--config={ROOT / 'configs' / 'retinanet' / 'r50_fpn.py'}",
         f"--workdir={workdir}", "--config.data.train.annotations=/nonexistent/train.json"],
        capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(workdir / "checkpoints") in proc.stderr and "Train first" in proc.stderr
    assert "nonexistent" not in proc.stderr  # the training annotations were not opened
    assert time.monotonic() - start < 120  # nothing was built or compiled


def test_eval_metadata_never_reads_the_training_annotations(tmp_path):
    cfg = default_data_config()
    cfg.train.annotations = "/nonexistent/train.json"
    cfg.val.annotations = str(FIXTURE / "instances_from_panoptic.json")
    cfg.val.images = str(FIXTURE / "images")
    info = data_setup.eval_dataset_info(cfg, str(tmp_path))
    assert info.train_source is None and info.classes.num_classes == 133
    # a run's own class list wins over the validation file's
    (tmp_path / "dataset.json").write_text(json.dumps(
        dict(class_names=["a", "b"], label_to_category=[7, 9], num_train_images=12)))
    info = data_setup.eval_dataset_info(cfg, str(tmp_path))
    assert info.classes == ClassList(("a", "b"), (7, 9)) and info.num_train_images == 12
