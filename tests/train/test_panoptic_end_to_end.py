"""Panoptic end to end (slow): a tiny run on the synthetic panoptic split trains on things and
stuff and its evaluation writes COCO panoptic predictions, PQ next to the box and mask AP, and
panoptic pictures. The fast pieces are in tests/evaluation/test_panoptic_*.py."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_panoptic_config  # noqa: E402

from msvision.evaluation.panoptic import evaluate_panoptic_files  # noqa: E402
from msvision.train import loop  # noqa: E402

PQ_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


@pytest.mark.slow
def test_tiny_panoptic_run_writes_predictions_and_pq(tmp_path):
    config = tiny_panoptic_config.get_config(str(tmp_path / "shapes"))
    config.train.num_steps = 4
    config.train.eval_at_end = True
    config.eval.visualize = 1
    workdir = tmp_path / "run"
    final = loop.train(config, str(workdir))
    with open(workdir / "dataset.json") as f:
        assert len(json.load(f)["class_names"]) == 10  # 6 things + 4 stuff
    with open(workdir / "eval" / "metrics_4.json") as f:
        metrics = json.load(f)
    for key in PQ_KEYS:
        assert 0.0 <= metrics[f"panoptic/{key}"] <= 1.0
    assert "bbox/AP" in metrics and "segm/AP" in metrics
    assert final["eval/panoptic/PQ"] == metrics["panoptic/PQ"]
    with open(workdir / "eval" / "panoptic_4.json") as f:
        predictions = json.load(f)
    assert len(predictions["annotations"]) == 8
    pngs = sorted(os.listdir(workdir / "eval" / "panoptic_4"))
    assert pngs == sorted(a["file_name"] for a in predictions["annotations"])
    # The files on disk score what the run reported (the standalone metric CLI's path).
    shapes_val = tmp_path / "shapes" / "val"
    summary = evaluate_panoptic_files(shapes_val / "panoptic.json", workdir / "eval" / "panoptic_4.json",
                                      shapes_val / "panoptic", workdir / "eval" / "panoptic_4").summary()
    assert summary["PQ"] == pytest.approx(metrics["panoptic/PQ"])
    assert len(os.listdir(workdir / "eval" / "vis_4")) == 1


@pytest.mark.quickstart
def test_quickstart_panoptic_reaches_its_target(tmp_path):
    """The README's panoptic command on a clean work directory: panoptic/PQ >= 0.35 (the trivial
    all-sky prediction scores 0.007), under 20 minutes on a quiet 2-core machine."""
    import subprocess
    import time

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    workdir = tmp_path / "quickstart_panoptic"
    start = time.perf_counter()
    subprocess.run([sys.executable, "train.py", "--config=configs/panoptic/quickstart_panoptic.py",
                    f"--workdir={workdir}", f"--config.data.synthetic.root={tmp_path / 'shapes'}"],
                   cwd=root, check=True)
    minutes = (time.perf_counter() - start) / 60
    steps = [int(name[len("metrics_"):-len(".json")]) for name in os.listdir(workdir / "eval")
             if name.startswith("metrics_")]
    with open(workdir / "eval" / f"metrics_{max(steps)}.json") as f:
        metrics = json.load(f)
    print(f"quickstart_panoptic: {minutes:.1f} min, PQ {metrics['panoptic/PQ']:.3f}")
    assert metrics["panoptic/PQ"] >= 0.35
    assert minutes < 20 or os.getloadavg()[0] > 2.5  # the time limit holds on a quiet machine
