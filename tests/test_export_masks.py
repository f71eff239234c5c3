"""``jax.export`` of a model with a segmentation head (tiny FQDet + EffSeg, random weights): the
exported function returns the live model's masks, and ``Predictor.from_exported`` pastes them
as the live ``Predictor`` does."""

import jax
import numpy as np
import pytest
from PIL import Image

import inference_helpers
from inference_helpers import CATEGORY_IDS, CLASS_NAMES, coco_mini_images
from msvision.data.classes import ClassList
from msvision.evaluation.panoptic_postprocess import paste_probs
from msvision.inference import Predictor, Preprocessing, make_detect_function, pad_images
from msvision.inference.artefact import save_exported
from msvision.inference.exporter import export_detector

DETECTION_KEYS = ("boxes", "scores", "labels", "valid", "masks", "mask_boxes")


def _model_output(predictor, image: np.ndarray) -> dict:
    """The raw arrays of ``predictor.detect`` for one image (a batch of 1, bucket 128x128)."""
    batch = pad_images([predictor.preprocessing.resize(image)], (128, 128))
    out = predictor.detect(batch.images, batch.image_sizes, batch.orig_sizes)
    return {k: np.asarray(out[k]) for k in DETECTION_KEYS}


@pytest.mark.slow  # an EffSeg export and two compiles (~40 s); detector export stays in the default run
def test_exported_masks_match_the_live_model(tmp_path):
    config = inference_helpers.tiny_inference_config(str(tmp_path / "no_data"), inference_helpers.TINY_EFFSEG_CONFIG,
                                                     ())
    graphdef, params, rest = inference_helpers.random_model_state(config, len(CLASS_NAMES))
    classes = ClassList(CLASS_NAMES, CATEGORY_IDS)
    preprocessing = Preprocessing.from_config(config.data)
    weights, treedef = jax.tree.flatten((params, rest))
    detect = jax.jit(make_detect_function(graphdef, treedef))
    live = Predictor(lambda *args: jax.device_get(detect(weights, *args)), classes, preprocessing,
                     score_threshold=0.0)
    path = tmp_path / "effseg.jaxexport"
    exported = export_detector(graphdef, params, rest, preprocessing.buckets)
    save_exported(str(path), exported, weights, classes, preprocessing, batch_size=None, step=3,
                  config=config.to_dict())
    loaded = Predictor.from_exported(str(path), score_threshold=0.0)
    assert loaded.panoptic is None and loaded.classes == classes
    out_names = {str(k) for k in jax.tree.leaves(jax.tree_util.tree_map_with_path(
        lambda p, _: jax.tree_util.keystr(p), loaded.detect.exported[(128, 128)].out_tree.unflatten(
            [0] * len(loaded.detect.exported[(128, 128)].out_avals))))}
    assert out_names == {f"['{k}']" for k in DETECTION_KEYS}

    rng = np.random.default_rng(3)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in coco_mini_images(2)]
    images.append(rng.integers(0, 255, (70, 37, 3), np.uint8))
    # Raw arrays: up to float32 rounding (separately compiled programs; the probabilities of
    # these random weights differ by up to ~1.2e-4, mask box corners of a 640 px image by ~0.01 px:
    # sampled at and scaled from boxes regressed through exp()).
    for image in images:
        want, got = _model_output(live, image), _model_output(loaded, image)
        np.testing.assert_array_equal(got["valid"], want["valid"])
        np.testing.assert_array_equal(got["labels"], want["labels"])
        np.testing.assert_allclose(got["masks"], want["masks"], atol=5e-4)
        np.testing.assert_allclose(got["mask_boxes"], want["mask_boxes"], rtol=1e-4, atol=0.05)
    # Pasted masks: equal except on pixels whose pasted probability is within float32 rounding of
    # the threshold 0.5.
    for image, a, b in zip(images, live.predict_arrays(images, masks="array"),
                           loaded.predict_arrays(images, masks="array")):
        want = _model_output(live, image)
        assert len(a) == len(b) == 20
        for k, (da, db) in enumerate(zip(a, b)):
            assert da["category_id"] == db["category_id"] and da["mask"].shape == image.shape[:2]
            differ = da["mask"] != db["mask"]
            if differ.any():
                probs = paste_probs(want["masks"][0, k:k + 1], want["mask_boxes"][0, k:k + 1], *image.shape[:2])[0]
                assert np.abs(probs[differ] - 0.5).max() < 2e-3
            assert differ.sum() <= 0.001 * differ.size
        assert sum(d["area"] for d in a) > 0
