"""Every command answers a missing file, malformed JSON or a wrong schema with one line naming the
file, and a non-zero exit; the traceback only with --verbose or MSVISION_VERBOSE=1 (``msvision.cli``)."""

import json
import os
import subprocess
import sys

import pytest

from msvision import cli
from msvision.evaluation import lvis as lvis_cli
from msvision.evaluation import panoptic as panoptic_cli

ROOT = os.path.join(os.path.dirname(__file__), "..")
SAMPLE = os.path.join(os.path.dirname(__file__), "data", "coco_panoptic_sample")
GT = os.path.join(SAMPLE, "panoptic_examples.json")


def _one_line(capsys, *needles):
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in out.err
    return lines[0]


def _panoptic(pred, capsys, *extra):
    return panoptic_cli.main(["--gt-json", GT, "--gt-folder", os.path.join(SAMPLE, "panoptic"),
                              "--pred-json", str(pred), "--pred-folder", SAMPLE, *extra])


def test_panoptic_evaluator(tmp_path, capsys):
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"annotations": 3}))
    assert _panoptic(pred, capsys) == 2
    _one_line(capsys, "python -m msvision.evaluation.panoptic: error:", str(pred), "'annotations' must be a list, got a number")
    pred.write_text(json.dumps({"annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [{"id": 1}]}]}))
    assert _panoptic(pred, capsys) == 2
    _one_line(capsys, str(pred), "'annotations'[0]['segments_info'][0] has no 'category_id'")
    pred.write_text('{"annotations": [}')
    assert _panoptic(pred, capsys) == 2
    _one_line(capsys, str(pred), "not valid JSON", "line 1, column 18")
    assert _panoptic(tmp_path / "missing.json", capsys) == 2
    _one_line(capsys, str(tmp_path / "missing.json"), "no such file")
    pred.write_text(json.dumps({"annotations": []}))  # valid, but no prediction for the ground truth's images
    assert _panoptic(pred, capsys) == 2
    _one_line(capsys, str(pred), "no prediction for the image with id")
    # The traceback on request.
    with pytest.raises(cli.InputError):
        _panoptic(pred, capsys, "--verbose")


def test_lvis_evaluator(tmp_path, capsys, monkeypatch):
    results = tmp_path / "results.json"
    results.write_text("[]")
    missing = tmp_path / "lvis_val_cocofied.json"
    assert lvis_cli.main(["eval", "--gt", str(missing), "--results", str(results)]) == 2
    _one_line(capsys, "python -m msvision.evaluation.lvis: error:", str(missing), "no such file")
    missing.write_text(json.dumps({"images": [], "annotations": {}, "categories": []}))
    assert lvis_cli.main(["eval", "--gt", str(missing), "--results", str(results)]) == 2
    _one_line(capsys, str(missing), "'annotations' must be a list, got an object")
    missing.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    results.write_text(json.dumps([{"image_id": 1, "score": 0.5}]))
    assert lvis_cli.main(["eval", "--gt", str(missing), "--results", str(results)]) == 2
    _one_line(capsys, str(results), "the results[0] has no 'category_id'")
    assert lvis_cli.main(["cocofy", "--lvis", str(results), "--synsets", str(results), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, str(results), "expected a JSON object at the top, got a list")
    monkeypatch.setenv(cli.VERBOSE_ENV, "1")
    with pytest.raises(cli.InputError):
        lvis_cli.main(["cocofy", "--lvis", str(results), "--synsets", str(results), "--out", str(tmp_path / "o")])


def test_train_eval_predict_export_analysis(tmp_path, capsys):
    import eval as eval_cli
    import train as train_cli

    from msvision import export, predict
    from msvision.analysis import __main__ as analysis

    config = os.path.join(ROOT, "configs", "quickstart.py")
    bad = tmp_path / "instances.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}))
    assert train_cli.main([f"--config={config}", f"--workdir={tmp_path / 'run'}",
                           f"--config.data.train.annotations={bad}", "--config.data.synthetic.enabled=False"]) == 2
    _one_line(capsys, "train.py: error:", str(bad), "'images'[0] has no 'height'")
    assert train_cli.main([f"--config={tmp_path / 'nope.py'}", f"--workdir={tmp_path / 'run'}"]) == 2
    _one_line(capsys, "train.py: error:", str(tmp_path / "nope.py"))
    assert eval_cli.main([f"--config={config}", f"--workdir={tmp_path / 'run'}"]) == 2
    _one_line(capsys, "eval.py: error:", str(tmp_path / "run" / "checkpoints"))
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "5").mkdir(parents=True)
    (workdir / "dataset.json").write_text("{'class_names': }")
    assert predict.main([f"--config={config}", f"--workdir={workdir}", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "python -m msvision.predict: error:", str(workdir / "dataset.json"), "not valid JSON")
    assert predict.main(["--exported", str(tmp_path / "model.jaxexport"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, str(tmp_path / "model.jaxexport"), "No such file")
    assert export.main([f"--config={config}", f"--workdir={workdir}", "--out", str(tmp_path / "m")]) == 2
    _one_line(capsys, "python -m msvision.export: error:", str(workdir / "dataset.json"))
    assert analysis.main([f"--config={tmp_path / 'nope.py'}", "--params-only"]) == 2
    _one_line(capsys, "python -m msvision.analysis: error:", str(tmp_path / "nope.py"))


def test_exit_status_and_single_line_from_a_shell(tmp_path):
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"annotations": 3}))
    command = [sys.executable, "-m", "msvision.evaluation.panoptic", "--gt-json", GT, "--pred-json", str(pred)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and str(pred) in proc.stderr
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, MSVISION_VERBOSE="1"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "InputError" in proc.stderr


def test_info_lines_show_after_orbax_is_imported():
    """Importing orbax gives the root logger a WARNING handler (absl's ``log`` calls
    ``logging.basicConfig()``); the entry points' ``cli.setup_logging`` must still show INFO
    lines such as train.py's "resuming from step N"."""
    script = ("import logging, orbax.checkpoint\n"
              "from absl import logging as absl_logging\n"
              "absl_logging.log(absl_logging.DEBUG, 'absl debug line')\n"  # what orbax's import does
              "from msvision import cli\n"
              "cli.setup_logging('INFO')\n"
              "logging.getLogger('msvision.train.loop').info('resuming from step %d', 10)\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "INFO msvision.train.loop: resuming from step 10" in result.stderr
