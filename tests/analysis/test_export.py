"""``export_inference``: jax.export of the inference function, serialized (needs flatbuffers)."""

import os

import jax
import numpy as np
import tiny_defenc_fqdetv2
from flax import nnx

from msvision.analysis.cost import abstract_model
from msvision.analysis.export import export_arguments, export_inference
from msvision.config import load_config
from msvision.models.build import build_model
from msvision.structures import Batch
from msvision.train.loop import make_predict_step

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TINY_RETINANET = ["model.backbone.depth=18", "model.backbone.width=8", "model.neck.channels=16",
                  "model.head.num_convs=1", "model.num_classes=3",
                  "model.head.prior_prob=0.3"]  # untrained scores above score_threshold: detections to compare


def _images(batch, h, w, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    image_sizes = np.array([[h, w], [h - 16, w - 8]][:batch], np.int32)
    orig_sizes = np.array([[2 * h, 2 * w], [h, w]][:batch], np.int32)
    return images, image_sizes, orig_sizes


def test_cpu_export_round_trip_matches_predict():
    config = load_config(os.path.join(ROOT, "configs", "retinanet", "r50_fpn.py"), TINY_RETINANET)
    graphdef = nnx.split(abstract_model(config.model), nnx.Param, ...)[0]
    init = lambda: nnx.split(build_model(config.model, rngs=nnx.Rngs(0)), nnx.Param, ...)[1:]
    params, rest = jax.jit(init)()  # one compile instead of one per initializer
    exported = export_inference(config, (params, rest), ("cpu",), batch_size=2, image_shape=(64, 48))
    restored = jax.export.deserialize(exported.serialize())
    assert restored.platforms == ("cpu",)

    images, image_sizes, orig_sizes = _images(2, 64, 48)
    actual = restored.call(*export_arguments(params, rest), images, image_sizes, orig_sizes)
    batch = Batch(images=images, image_sizes=image_sizes, orig_sizes=orig_sizes,
                  image_ids=np.zeros(2, np.int32), boxes=np.zeros((2, 1, 4), np.float32),
                  labels=np.zeros((2, 1), np.int32), valid=np.zeros((2, 1), bool), is_crowd=np.zeros((2, 1), bool))
    expected = jax.jit(make_predict_step(graphdef))(params, rest, batch)  # what evaluation runs
    assert set(actual) == {"boxes", "scores", "labels", "valid"}
    assert int(np.sum(expected.valid)) > 0
    for key in actual:
        np.testing.assert_allclose(actual[key], getattr(expected, key), rtol=1e-5, atol=1e-4, err_msg=key)


def test_cuda_export_of_an_msda_model_serializes_without_a_gpu():
    config = tiny_defenc_fqdetv2.get_config()
    exported = export_inference(config, None, ("cuda",), image_shape=(64, 64))
    restored = jax.export.deserialize(exported.serialize())
    assert restored.platforms == ("cuda",)
    assert restored.in_avals[-3].shape == (1, 64, 64, 3)
    text = restored.mlir_module()
    assert text.count("__gpu$xla.gpu.triton") == tiny_defenc_fqdetv2.MSDA_LAYERS
    assert "msda_forward" in text

    stable = export_inference(config, None, ("cuda",), image_shape=(64, 64), allow_triton=False)
    assert "xla.gpu.triton" not in stable.mlir_module()
    assert jax.export.deserialize(stable.serialize()).out_avals == restored.out_avals
