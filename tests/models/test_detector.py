"""Detector: full-size parameter counts vs torchvision, normalisation, predict mapping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.build import build_model, default_model_config
from msvision.models.layers import Frozen, FrozenStat, count_variables
from msvision.ops.boxes import clip_boxes, scale_boxes
from msvision.structures import Batch
from msvision.models.abstract import abstract_init


def full_size_count(**overrides):
    cfg = default_model_config()
    for section, values in overrides.items():
        cfg[section].update(values)
    model = abstract_init(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
    return count_variables(model, nnx.Param) + count_variables(model, Frozen, exclude=(FrozenStat,))


def retinanet_head_params(num_convs, last_kernel, num_classes, d=256, a=9):
    hidden = num_convs * (9 * d * d + d)
    cls = hidden + last_kernel**2 * d * a * num_classes + a * num_classes
    box = hidden + last_kernel**2 * d * a * 4 + a * 4
    return cls + box


@pytest.mark.oracle
def test_full_size_param_count_vs_torchvision_retinanet():
    pytest.importorskip("torch")
    detection = pytest.importorskip("torchvision.models.detection")
    tv = detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    tv_count = sum(p.numel() for p in tv.parameters())
    assert tv_count == 34_068_119  # "34.07M"; BatchNorm affine counted (nn.BatchNorm2d without weights)
    # Differences: our head has C=1 hidden convs and 1×1 last layers on 80 classes; torchvision
    # C=4, 3×3 last layers, 91 classes. FPN: torchvision's P6 reads P5 (256 ch) like our 'mmdet'
    # variant (lateral P5, 256 ch); the 'retinanet' variant reads C5 (2048 ch).
    head_diff = retinanet_head_params(1, 1, 80) - retinanet_head_params(4, 3, 91)
    assert full_size_count() == tv_count + head_diff == 28_751_156
    p6_diff = 9 * (2048 - 256) * 256
    assert full_size_count(neck=dict(variant="retinanet")) == tv_count + head_diff + p6_diff
    c4_diff = retinanet_head_params(4, 1, 80) - retinanet_head_params(4, 3, 91)
    assert full_size_count(head=dict(subnets=dict(num_convs=4))) == tv_count + c4_diff


def test_param_groups_and_frozen_split():
    model = abstract_init(lambda: build_model(default_model_config(), rngs=nnx.Rngs(0)))
    assert count_variables(model.backbone, Frozen, exclude=(FrozenStat,)) == 275_520  # stem + stage 1 + BN affine
    assert count_variables(model.neck, Frozen) == 0 and count_variables(model.head, Frozen) == 0


def _tiny_model():
    cfg = default_model_config()
    cfg.num_classes = 3
    cfg.backbone.update(depth=18, width=8)
    cfg.neck.channels = 16
    cfg.head.inference.update(nms_candidates=30, max_detections=10)
    return build_model(cfg, rngs=nnx.Rngs(0))


def _batch():
    rng = np.random.default_rng(0)
    return Batch(
        images=rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
        image_sizes=np.array([[64, 48], [40, 64]], np.int32),
        orig_sizes=np.array([[128, 100], [60, 96]], np.int32),
        image_ids=np.arange(2, dtype=np.int32),
        boxes=np.zeros((2, 1, 4), np.float32),
        labels=np.zeros((2, 1), np.int32),
        valid=np.zeros((2, 1), bool),
        is_crowd=np.zeros((2, 1), bool),
    )


def test_normalize_zeroes_padding():
    model = _tiny_model()
    batch = _batch()
    x = np.asarray(model.normalize_images(batch))
    assert np.all(x[0, :, 48:] == 0) and np.all(x[1, 40:] == 0)
    mean, std = np.array(model.pixel_mean), np.array(model.pixel_std)
    np.testing.assert_allclose(x[0, 5, 7], (batch.images[0, 5, 7] - mean) / std, rtol=1e-5)


def test_predict_maps_to_original_pixels():
    model = _tiny_model()
    model.head.cls_score.bias[...] = jnp.full(model.head.cls_score.bias.shape, 3.0)
    batch = _batch()

    @jax.jit
    def run(batch):
        padded = model.head.predict(model.pyramid(batch), batch)
        return padded, model.predict(batch)

    padded, dets = run(batch)
    assert dets.boxes.shape == (2, 10, 4) and bool(dets.valid.all())
    scale = (batch.orig_sizes / batch.image_sizes)[:, None, ::-1]  # (sx, sy)
    expected = clip_boxes(scale_boxes(padded.boxes, scale), batch.orig_sizes[:, None, :])
    np.testing.assert_allclose(np.asarray(dets.boxes), np.asarray(expected), rtol=1e-5, atol=1e-4)
    for b in range(2):
        h, w = batch.orig_sizes[b]
        boxes = np.asarray(dets.boxes[b])
        assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= w and boxes[:, [1, 3]].max() <= h
