"""RetinaNet head: the parameter tree checkpoints rely on, the config layout, loss vs a
numpy reference, finite loss at init, fixed-shape predictions, one-batch overfitting."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from msvision.models.abstract import abstract_init
from msvision.models.build import build_model, default_model_config, module_config
from msvision.models.heads.retinanet import (RetinaNetCriterion, RetinaNetHead, RetinaNetMatcher,
                                             RetinaNetPostProcess, SubnetSpec)
from msvision.ops.anchors import AnchorSpec
from msvision.structures import Batch


def make_batch(images_hw=(64, 64), image_sizes=((64, 64), (48, 56)), seed=0):
    rng = np.random.default_rng(seed)
    b = len(image_sizes)
    return Batch(
        images=rng.integers(0, 256, (b, *images_hw, 3), dtype=np.uint8),
        image_sizes=np.asarray(image_sizes, np.int32),
        orig_sizes=np.asarray(image_sizes, np.int32) * 2,
        image_ids=np.arange(b, dtype=np.int32),
        boxes=np.array(
            [[[4, 6, 30, 40], [30, 20, 60, 44], [0, 0, 0, 0]], [[10, 8, 26, 20], [20, 24, 50, 46], [0, 0, 8, 8]]],
            np.float32,
        )[:b],
        labels=np.array([[0, 2, 0], [1, 2, 0]], np.int32)[:b],
        valid=np.array([[1, 1, 0], [1, 1, 1]], bool)[:b],
        is_crowd=np.array([[0, 0, 0], [0, 0, 1]], bool)[:b],
    )


def tiny_config(**head):
    cfg = default_model_config()
    cfg.num_classes = 3
    cfg.backbone.update(depth=18, width=8)
    cfg.neck.channels = 16
    cfg.head.update(head)
    return cfg


# --- parameters and config layout ---------------------------------------------------

# The head of the default model (R50-FPN-RetinaNet, 80 classes, D = 256, 9 anchors, C = 1,
# 1×1 last layers): checkpoints are read by these paths, so they must not change.
DEFAULT_HEAD_STATE = [
    ("bbox_pred/bias", "Param", (36,)),
    ("bbox_pred/kernel", "Param", (1, 1, 256, 36)),
    ("box_subnet/0/bias", "Param", (256,)),
    ("box_subnet/0/kernel", "Param", (3, 3, 256, 256)),
    ("cls_score/bias", "Param", (720,)),
    ("cls_score/kernel", "Param", (1, 1, 256, 720)),
    ("cls_subnet/0/bias", "Param", (256,)),
    ("cls_subnet/0/kernel", "Param", (3, 3, 256, 256)),
    ("loss_normalizer", "LossNormalizer", (5,)),
]


def test_default_head_state_paths_unchanged():
    model = abstract_init(lambda: build_model(default_model_config(), rngs=nnx.Rngs(0)))
    got = [("/".join(map(str, path)), type(v).__name__, tuple(v.shape))
           for path, v in nnx.to_flat_state(nnx.state(model.head))]
    assert sorted(got) == DEFAULT_HEAD_STATE


def test_config_sections_and_names_shared_with_fqdet():
    retina, fqdet = module_config("head", "retinanet"), module_config("head", "fqdet")
    assert set(retina) == {"name", "anchors", "subnets", "matcher", "loss", "inference"}
    assert set(retina.subnets) == {"num_convs", "last_kernel_size", "prior_prob"}
    # One name and one path per setting the two heads share.
    for section, keys in {
        "matcher": ("absolute_pos_iou", "absolute_neg_iou", "absolute_low_quality", "crowd_ignore",
                    "crowd_ioa_threshold", "ignore_padding_anchors"),
        "loss": ("focal_alpha", "focal_gamma", "box", "box_weight"),
        "inference": ("nms_iou", "nms_candidates", "max_detections"),
    }.items():
        assert set(keys) <= set(retina[section]) & set(fqdet[section]), section
    head = build_model(tiny_config(subnets=dict(num_convs=2), loss=dict(box="smooth_l1"),
                                   inference=dict(nms_candidates=7)), rngs=nnx.Rngs(0)).head
    assert len(head.cls_subnet) == 2 and head.criterion.box == "smooth_l1" and head.postprocess.nms_candidates == 7
    with pytest.raises(ValueError, match="loss.box must be one of"):
        RetinaNetCriterion(box="giou")
    with pytest.raises(ValueError, match="loss.normalization must be one of"):
        RetinaNetCriterion(normalization="per_image")


def test_stateful_normalizer_error_names_the_config_key():
    head = RetinaNetHead(3, levels=(3, 4), channels=4, rngs=nnx.Rngs(0))
    pyramid = {3: jnp.zeros((2, 8, 8, 4)), 4: jnp.zeros((2, 4, 4, 4))}
    batch = make_batch()
    with pytest.raises(RuntimeError, match=r"model\.head\.loss\.normalizer_momentum=0"):
        jax.jit(lambda p: head.losses(p, batch)[0])(pyramid)  # the EMA cannot leave a plain jax.jit
    stateless = RetinaNetHead(3, levels=(3, 4), channels=4, loss=RetinaNetCriterion(normalizer_momentum=0.0),
                              rngs=nnx.Rngs(0))
    assert np.isfinite(float(jax.jit(lambda p: stateless.losses(p, batch)[0])(pyramid)))


# --- numpy reference ---------------------------------------------------------------


def np_iou(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    union = area(a)[:, None] + area(b)[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def np_reference_loss(logits, deltas, anchors, batch, alpha, gamma, momentum, init, pos=0.5, neg=0.4,
                      ignore_padding=False, cells=None):
    """Straightforward per-image loops of detectron2's RetinaNet loss, per-level EMA.

    ``ignore_padding``: anchors whose cell ``(y, x, stride)`` (``cells [N, 3]``) lies outside
    the image's valid map (ceil(h / stride) rows) are never negatives."""
    levels = sorted(anchors)
    all_anchors = np.concatenate([anchors[l] for l in levels])
    level_of = np.concatenate([np.full(len(anchors[l]), i) for i, l in enumerate(levels)])
    lg = np.concatenate([logits[l] for l in levels], axis=1)
    dl = np.concatenate([deltas[l] for l in levels], axis=1)
    num_levels = len(levels)
    cls_sum, box_sum, npos = np.zeros(num_levels), np.zeros(num_levels), np.zeros(num_levels)
    for b in range(lg.shape[0]):
        real = batch.valid[b] & ~batch.is_crowd[b]
        gt = batch.boxes[b]
        iou = np.where(real[None], np_iou(all_anchors, gt), -1.0)
        best = iou.max(1)
        arg = iou.argmax(1)
        label = np.where(best >= pos, 1, np.where(best >= neg, -1, 0))
        for j in np.nonzero(real)[0]:
            if iou[:, j].max() > 0:
                label[iou[:, j] == iou[:, j].max()] = 1
        if ignore_padding:
            h, w = batch.image_sizes[b]
            outside = (cells[:, 0] >= -(-h // cells[:, 2])) | (cells[:, 1] >= -(-w // cells[:, 2]))
            label[(label == 0) & outside] = -1
        for n in range(len(all_anchors)):
            if label[n] < 0:
                continue
            t = np.zeros(lg.shape[-1])
            if label[n] == 1:
                t[batch.labels[b, arg[n]]] = 1
            p = 1 / (1 + np.exp(-lg[b, n]))
            ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
            p_t = p * t + (1 - p) * (1 - t)
            a_t = alpha * t + (1 - alpha) * (1 - t)
            cls_sum[level_of[n]] += np.sum(a_t * (1 - p_t) ** gamma * ce)
            if label[n] == 1:
                g, a = gt[arg[n]], all_anchors[n]
                aw, ah = a[2] - a[0], a[3] - a[1]
                gw, gh = g[2] - g[0], g[3] - g[1]
                target = [
                    (g[0] + gw / 2 - a[0] - aw / 2) / aw,
                    (g[1] + gh / 2 - a[1] - ah / 2) / ah,
                    math.log(gw / aw),
                    math.log(gh / ah),
                ]
                box_sum[level_of[n]] += np.abs(dl[b, n] - np.asarray(target)).sum()
                npos[level_of[n]] += 1
    norm = momentum * init + (1 - momentum) * np.maximum(npos, 1)
    return float(np.sum(cls_sum / norm) + np.sum(box_sum / norm)), norm


@pytest.mark.parametrize("ignore_padding", [False, True])
def test_loss_matches_numpy_reference(ignore_padding):
    head = RetinaNetHead(
        3, levels=(3, 4), channels=4, anchors=AnchorSpec(num_sizes=2, aspect_ratios=(0.5, 1.0), offset=0.0),
        subnets=SubnetSpec(num_convs=1), matcher=RetinaNetMatcher(ignore_padding_anchors=ignore_padding),
        loss=RetinaNetCriterion(normalizer_momentum=0.5, normalizer_init=4.0), rngs=nnx.Rngs(0),
    )
    # random, non-trivial predictions
    for conv in (head.cls_score, head.bbox_pred):
        conv.kernel[...] = jax.random.normal(jax.random.key(1), conv.kernel.shape) * 0.5
    batch = make_batch()
    pyramid = {
        3: jax.random.normal(jax.random.key(2), (2, 8, 8, 4)),
        4: jax.random.normal(jax.random.key(3), (2, 4, 4, 4)),
    }
    logits, deltas = head(pyramid, jnp.asarray(batch.image_sizes))  # padding-aware, as in losses()
    # anchors written out independently: sizes 4·2^l·2^(j/2), ratios h/w, centres stride·(x, y)
    anchors = {}
    for level, (fh, fw) in ((3, (8, 8)), (4, (4, 4))):
        s = 2**level
        cell = []
        for size in (4 * s, 4 * s * 2**0.5):
            for r in (0.5, 1.0):
                w = math.sqrt(size * size / r)
                cell.append((w, r * w))
        anchors[level] = np.array(
            [[x * s - w / 2, y * s - h / 2, x * s + w / 2, y * s + h / 2] for y in range(fh) for x in range(fw) for w, h in cell],
            np.float32,
        )
        np.testing.assert_allclose(head.anchors(pyramid)[level], anchors[level], rtol=1e-6, atol=1e-4)
    cells = np.array([[y, x, 2**level] for level, (fh, fw) in ((3, (8, 8)), (4, (4, 4)))
                      for y in range(fh) for x in range(fw) for _ in range(4)])
    expected, expected_norm = np_reference_loss(
        {l: np.asarray(v, np.float64) for l, v in logits.items()},
        {l: np.asarray(v, np.float64) for l, v in deltas.items()},
        anchors, batch, 0.25, 2.0, 0.5, 4.0, ignore_padding=ignore_padding, cells=cells,
    )
    loss, metrics = nnx.jit(lambda h, p: h.losses(p, batch))(head, pyramid)  # nnx.jit keeps the EMA update
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(head.loss_normalizer[...]), expected_norm, rtol=1e-6)  # EMA updated


def test_detector_loss_bf16_finite():
    model = build_model(_with(tiny_config(), dtype="bfloat16"), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))

    @jax.jit
    def loss_fn(params, rest, batch):
        return nnx.merge(graphdef, params, rest, copy=True).losses(batch)

    loss, metrics = loss_fn(params, rest, make_batch())
    assert loss.dtype == jnp.float32 and np.isfinite(float(loss)) and float(loss) > 0
    assert set(metrics) >= {"loss_cls", "loss_box", "num_positive_anchors"}
    assert float(metrics["num_positive_anchors"]) > 0


def _with(cfg, **kw):
    cfg.update(kw)
    return cfg


def test_predict_fixed_shapes():
    head = RetinaNetHead(
        3, levels=(3, 4), channels=4, inference=RetinaNetPostProcess(nms_candidates=50, max_detections=20),
        rngs=nnx.Rngs(0),
    )
    head.cls_score.bias[...] = jnp.full(head.cls_score.bias.shape, 2.0)  # every score above threshold
    batch = make_batch()
    pyramid = {3: jax.random.normal(jax.random.key(2), (2, 8, 8, 4)), 4: jax.random.normal(jax.random.key(3), (2, 4, 4, 4))}
    dets = jax.jit(lambda p, b: head.predict(p, b))(pyramid, batch)
    assert dets.boxes.shape == (2, 20, 4) and dets.scores.shape == (2, 20) and dets.labels.shape == (2, 20)
    num_valid = np.asarray(dets.num_valid)
    assert (num_valid > 0).all() and (num_valid <= 20).all()
    for b in range(2):
        s = np.asarray(dets.scores[b])
        assert (np.diff(s[: num_valid[b]]) <= 1e-7).all()
        assert np.asarray(dets.valid[b, : num_valid[b]]).all() and not np.asarray(dets.valid[b, num_valid[b]:]).any()
        h, w = batch.image_sizes[b]
        boxes = np.asarray(dets.boxes[b, : num_valid[b]])
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
    # nothing above threshold -> no valid detections
    head.cls_score.bias[...] = jnp.full(head.cls_score.bias.shape, -10.0)
    assert int(jax.jit(lambda p, b: head.predict(p, b))(pyramid, batch).num_valid.sum()) == 0


def test_overfits_one_batch():
    model = build_model(tiny_config(loss=dict(normalizer_momentum=0.0)), rngs=nnx.Rngs(0))
    batch = make_batch()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: nnx.merge(graphdef, p, rest, copy=True).losses(batch)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(50):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[0] > 0  # finite loss at init (float32)
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
