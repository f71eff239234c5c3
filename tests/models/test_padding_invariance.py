"""An image's detections do not depend on its batch or bucket (bucket invariance).

The same image evaluated alone in its own bucket and inside a batch of 8 padded to
the quickstart's largest bucket must give the same pyramid on its valid cells and the
same detections (boxes within 0.5 px, scores within 1e-3), for quickstart-size
models with the TPN, BiFPN and DefEncoder necks (random weights: the property holds
for any weights).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.config_sections import load_config
from msvision.models.build import build_model, module_config
from msvision.structures import Batch

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGE_HW = (213, 301)  # the image under test (odd sizes: ceil at every stride)
ALONE_BUCKET = (256, 320)
BATCH_BUCKET = (320, 320)  # the quickstart's largest bucket


def model_config(neck: str):
    config = load_config(str(ROOT / "configs" / "quickstart.py"))
    model = config.model
    model.num_classes = 5
    if neck == "tpn":
        model.neck = load_config(str(ROOT / "configs" / "retinanet" / "quickstart_tpn.py")).model.neck
    elif neck == "bifpn":
        model.neck = module_config("neck", "bifpn")
        model.neck.update(num_layers=2, channels=64)
    if neck == "defenc":  # DefEncoder + FQDet, small
        model.neck = module_config("neck", "defenc")
        model.neck.update(channels=64, num_layers=2, num_heads=4, ffn_dim=128, msda_impl="xla")
        model.head = module_config("head", "fqdet")
        model.head.selector.update(num_queries=50, hidden_channels=16)
        model.head.decoder.update(num_layers=2, num_heads=4, self_attn_heads=4, ffn_dim=128, num_points=1,
                                  msda_impl="xla")
        model.head.inference.labels = "query_class_pairs"
    else:
        model.head.inference.score_threshold = 0.0  # random weights score near the 0.01 prior
    model.backbone.width = 8
    return model


def make_batch(images, sizes, bucket):
    n = len(images)
    canvas = np.zeros((n, *bucket, 3), np.uint8)
    for i, (img, (h, w)) in enumerate(zip(images, sizes)):
        canvas[i, :h, :w] = img[:h, :w]
    sizes = np.asarray(sizes, np.int32)
    return Batch(images=canvas, image_sizes=sizes, orig_sizes=sizes, image_ids=np.arange(n, dtype=np.int32),
                 boxes=np.zeros((n, 1, 4), np.float32), labels=np.zeros((n, 1), np.int32),
                 valid=np.zeros((n, 1), bool), is_crowd=np.zeros((n, 1), bool))


def images_and_sizes():
    rng = np.random.default_rng(0)
    # smooth random images (blurred noise + a few rectangles) so features vary spatially
    images, sizes = [], [IMAGE_HW]
    for i in range(8):
        img = rng.integers(0, 256, (BATCH_BUCKET[0], BATCH_BUCKET[1], 3)).astype(np.float32)
        for _ in range(3):
            y0, x0 = rng.integers(0, 200, 2)
            img[y0:y0 + 60, x0:x0 + 80] = rng.integers(0, 256, 3)
        images.append(img.astype(np.uint8))
        if i:
            sizes.append(tuple(int(v) for v in rng.integers(120, 321, 2)))
    return images, sizes


def match_detections(a, b):
    """Every detection of ``a`` above its list's tail finds one in ``b`` with the same label,
    box within 0.5 px and score within 1e-3 (the tail may swap with near-tied outsiders)."""
    n_a, n_b = int(a["valid"].sum()), int(b["valid"].sum())
    assert n_a > 10 and abs(n_a - n_b) <= 1, (n_a, n_b)
    floor = a["scores"][n_a - 1] + 1e-3
    checked = 0
    for i in range(n_a):
        if a["scores"][i] <= floor:
            continue
        close = ((b["labels"][:n_b] == a["labels"][i]) & (np.abs(b["scores"][:n_b] - a["scores"][i]) <= 1e-3)
                 & (np.abs(b["boxes"][:n_b] - a["boxes"][i]).max(-1) <= 0.5))
        assert close.any(), (i, a["boxes"][i], a["scores"][i], a["labels"][i])
        checked += 1
    assert checked > 10


# BiFPN and DefEncoder under -m slow (~1 min each on 2 cores); the DefEncoder's
# padding rule is also checked in the default run by tests/models/test_defenc.py.
@pytest.mark.parametrize("neck", ["tpn", pytest.param("bifpn", marks=pytest.mark.slow),
                                  pytest.param("defenc", marks=pytest.mark.slow)])
def test_image_alone_and_in_a_padded_batch_agree(neck):
    model = build_model(model_config(neck), rngs=nnx.Rngs(0))
    if neck != "defenc":  # spread the scores of the random RetinaNet (init: N(0, 0.01), prior 0.01)
        cls = model.head.cls_score
        cls.kernel[...] = jax.random.normal(jax.random.key(1), cls.kernel.shape) * 0.3
        cls.bias[...] = jnp.zeros_like(cls.bias[...])
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(batch):
        m = nnx.merge(graphdef, state)
        return m.pyramid(batch), m.predict(batch)

    images, sizes = images_and_sizes()
    alone_pyr, alone = run(make_batch(images[:1], sizes[:1], ALONE_BUCKET))
    batch_pyr, batched = run(make_batch(images, sizes, BATCH_BUCKET))

    h, w = IMAGE_HW
    for level, x in alone_pyr.items():
        hv, wv = -(-h // 2**level), -(-w // 2**level)
        a = np.asarray(x[0, :hv, :wv], np.float64)
        b = np.asarray(batch_pyr[level][0, :hv, :wv], np.float64)
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(a).max()), (level, np.abs(a - b).max())

    pick = lambda d: {k: np.asarray(getattr(d, k)[0]) for k in ("boxes", "scores", "labels", "valid")}  # noqa: E731
    match_detections(pick(alone), pick(batched))
    match_detections(pick(batched), pick(alone))
