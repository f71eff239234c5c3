"""``jax.export`` of the inference function: the deserialised function gives the live model's
and evaluation's detections; symbolic and static batch (CUDA artefacts: ``test_export_cuda.py``)."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

import inference_helpers
from inference_helpers import CATEGORY_IDS, CLASS_NAMES, CONFIG_OVERRIDES, assert_same_detections, coco_mini_images
from msvision import export as export_cli
from msvision.data.batching import collate
from msvision.inference import Predictor, pad_images
from msvision.inference.artefact import load_exported
from msvision.inference.exporter import export_detector
from msvision.train.loop import make_predict_step


def _images():
    rng = np.random.default_rng(2)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in coco_mini_images(2)]
    return photos + [rng.integers(0, 255, (300, 37, 3), np.uint8)]


def test_exported_function_matches_live_model(tmp_path, inference_workdir, live_predictor):
    config_arg, workdir, _ = inference_workdir
    out = tmp_path / "model.jaxexport"
    assert export_cli.main([f"--config={config_arg}", f"--workdir={workdir}", "--out", str(out),
                            *CONFIG_OVERRIDES]) == 0
    exported = load_exported(str(out))
    assert exported.platforms == ("cpu",) and exported.batch_size is None and exported.step == 5
    assert exported.classes.class_names == CLASS_NAMES and exported.classes.label_to_category == CATEGORY_IDS
    assert sorted(exported.exported) == [(128, 128)]
    assert str(exported.exported[(128, 128)].in_avals[-3].shape) == "(b, 128, 128, 3)"  # symbolic batch
    assert json.loads(json.dumps(exported.manifest))["config"]["model"]["head"]["inference"]["score_threshold"] == 0.0

    # Raw arrays: the deserialised function on a batch of 3 equals the live one (batches of 1) up to
    # float32 rounding (separately compiled programs: box coordinates of a few hundred pixels come out
    # of exp() of the regressed deltas, so compare with a relative tolerance).
    images = _images()
    batch = pad_images([live_predictor.preprocessing.resize(im) for im in images], (128, 128))
    live = _live_arrays(live_predictor, batch)
    assert live["valid"].sum() > 0
    _assert_same_arrays(exported(batch.images, batch.image_sizes, batch.orig_sizes), live)

    # Through the Predictor (``Predictor.from_exported`` does the same from the path; batches of 3
    # share the compiled function): same detection dicts as the live model.
    from_file = Predictor(exported, exported.classes, exported.preprocessing, batch_size=3, score_threshold=0.0)
    for a, b in zip(live_predictor.predict_arrays(images), from_file.predict_arrays(images)):
        assert_same_detections(a, b)


def _live_arrays(live_predictor, batch):
    live = [live_predictor.detect(batch.images[i:i + 1], batch.image_sizes[i:i + 1], batch.orig_sizes[i:i + 1])
            for i in range(len(batch.images))]
    return {k: np.concatenate([d[k] for d in live]) for k in live[0]}


def _assert_same_arrays(got, live):
    np.testing.assert_array_equal(got["valid"], live["valid"])
    np.testing.assert_array_equal(got["labels"], live["labels"])
    np.testing.assert_allclose(got["scores"], live["scores"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["boxes"], live["boxes"], rtol=1e-4, atol=1e-3)


@pytest.mark.slow  # two more compiles of the tiny model
def test_symbolic_batch_runs_at_any_size(tmp_path, inference_workdir, live_predictor):
    config_arg, workdir, _ = inference_workdir
    out = tmp_path / "model.jaxexport"
    assert export_cli.main([f"--config={config_arg}", f"--workdir={workdir}", "--out", str(out),
                            *CONFIG_OVERRIDES]) == 0
    exported = load_exported(str(out))
    images = _images()
    batch = pad_images([live_predictor.preprocessing.resize(im) for im in images], (128, 128))
    live = _live_arrays(live_predictor, batch)
    for sl in (slice(1, 2), slice(0, 2)):
        got = exported(batch.images[sl], batch.image_sizes[sl], batch.orig_sizes[sl])
        _assert_same_arrays(got, {k: v[sl] for k, v in live.items()})


@pytest.mark.slow  # one more compile of the tiny model
def test_static_batch_for_cpu_and_cuda(tmp_path, inference_workdir, live_predictor):
    config_arg, workdir, _ = inference_workdir
    out = tmp_path / "both.jaxexport"
    assert export_cli.main([f"--config={config_arg}", f"--workdir={workdir}", "--out", str(out), "--batch-size", "2",
                            "--platform", "cpu", "--platform", "cuda", *CONFIG_OVERRIDES]) == 0
    exported = load_exported(str(out))
    assert exported.platforms == ("cpu", "cuda") and exported.batch_size == 2
    assert exported.exported[(128, 128)].platforms == ("cpu", "cuda")
    assert exported.exported[(128, 128)].in_avals[-3].shape == (2, 128, 128, 3)
    with pytest.raises(ValueError, match="batches of 2"):
        Predictor.from_exported(str(out), batch_size=3)
    # Runs here on the CPU: three images = two batches of 2, the last one padded.
    from_file = Predictor.from_exported(str(out), score_threshold=0.0)
    with pytest.raises(ValueError, match="runs batches of 2 only"):
        from_file.predict_files([str(tmp_path)], str(tmp_path / "preds"), batch_size=3)
    images = _images()
    for a, b in zip(live_predictor.predict_arrays(images), from_file.predict_arrays(images)):
        assert_same_detections(a, b)


@pytest.mark.slow  # two compiles of the tiny model
def test_exported_function_matches_evaluation_predict_step(tmp_path):
    # What evaluation runs (make_predict_step) and the exported function agree on a static batch of 2,
    # with an image smaller than the bucket and the original size ≠ network size. The exported function
    # gets random pixels in the padding, evaluation zeros: the model is padding-aware.
    config = inference_helpers.tiny_inference_config(str(tmp_path / "no_data"))
    graphdef, params, rest = inference_helpers.random_model_state(config, num_classes=3, seed=1)
    exported = export_detector(graphdef, params, rest, [(64, 48)], batch_size=2)[(64, 48)]
    restored = jax.export.deserialize(exported.serialize())
    assert restored.platforms == ("cpu",) and restored.in_avals[-3].shape == (2, 64, 48, 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
    image_sizes = np.array([[64, 48], [48, 40]], np.int32)
    orig_sizes = np.array([[128, 96], [48, 40]], np.int32)
    actual = restored.call(jax.tree.leaves((params, rest)), images, image_sizes, orig_sizes)
    batch = collate([dict(image=images[i, :h, :w], orig_size=tuple(orig_sizes[i]), image_id=i,
                          boxes=np.zeros((0, 4), np.float32), labels=np.zeros((0,), np.int32),
                          is_crowd=np.zeros((0,), bool)) for i, (h, w) in enumerate(image_sizes)],
                    (64, 48), max_instances=1)
    expected = jax.jit(make_predict_step(graphdef))(params, rest, batch)
    assert set(actual) == {"boxes", "scores", "labels", "valid"}
    assert int(np.sum(expected.valid)) > 0
    for key in actual:
        np.testing.assert_allclose(actual[key], getattr(expected, key), rtol=1e-5, atol=1e-4, err_msg=key)
