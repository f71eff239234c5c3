"""RefineMask++ head (thesis §5.4.1): stage shapes, class-specific early logits, a jitted training
step of the tiny head whose losses decrease (slow), the optional semantic loss against numpy,
and (slow) masks independent of the batch padding.

Tiny head: 16 channels (F = 16 → 8 → 4 → 2), pyramid P2–P5 of a 64 px canvas, parameters
drawn on the host (nothing to initialise)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from msvision.models.abstract import abstract_init
from msvision.models.heads.refinemask import RefineMaskCriterion, RefineMaskHead
from msvision.models.heads.refinemask.head import foreground_target
from msvision.structures import Batch, QueryOutputs

C = 16
CLASSES = 5
LEVELS = (2, 3, 4, 5)
CANVAS = 64
IMAGE_SIZES = np.array([[64, 64], [50, 58]], np.int32)
BOXES = np.array([[[4, 6, 40, 50], [10, 0, 61, 30], [0, 0, 1, 1]],
                  [[20, 20, 31, 33], [5, 3, 56, 47], [30, 10, 44, 30]]], np.float32)
ROI_VALID = np.array([[True, True, False], [True, True, True]])


@functools.lru_cache(maxsize=None)
def _build(items):
    kw = dict(items)
    graphdef, abstract = nnx.split(abstract_init(lambda: RefineMaskHead(levels=LEVELS, channels=C,
                                                                        num_classes=CLASSES, **kw,
                                                                        rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)

    def draw(x):  # N(0, 1/fan_in) kernels, N(0, 0.1²) biases
        fan_in = math.prod(x.shape[:-1]) if len(x.shape) > 1 else 100
        return jnp.asarray(rng.normal(size=x.shape) / math.sqrt(fan_in), x.dtype)

    return graphdef, jax.tree.map(draw, abstract)


def build(**kw):
    return _build(tuple(sorted(kw.items())))


def make_pyramid(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return {l: jnp.asarray(rng.normal(size=(batch, CANVAS >> l, CANVAS >> l, C)), jnp.float32) for l in LEVELS}


@functools.partial(jax.jit, static_argnums=0)
def _run_head(graphdef, state, pyramid, image_sizes, queries, boxes, labels, valid):
    return nnx.merge(graphdef, state)(pyramid, image_sizes, queries, boxes, labels, valid)


def run_head(graphdef, state, pyramid, queries, boxes, labels, valid, image_sizes=IMAGE_SIZES):
    out = _run_head(graphdef, state, pyramid, jnp.asarray(image_sizes, jnp.int32), queries, boxes,
                    jnp.asarray(labels, jnp.int32), valid)
    return jax.tree.map(np.asarray, out)


def test_stage_shapes_and_class_specific_logits():
    graphdef, state = build()
    queries = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, C)), jnp.float32)
    labels = np.array([[0, 3, 1], [4, 2, 2]], np.int32)
    stages, semantic = run_head(graphdef, state, make_pyramid(), queries, jnp.asarray(BOXES), labels,
                                jnp.asarray(ROI_VALID))
    assert semantic is None  # no semantic loss by default (the released SimpleRefineMaskHead)
    assert [s.shape for s in stages] == [(2, 3, n, n) for n in (14, 28, 56, 112)]
    assert all(s.dtype == np.float32 and np.isfinite(s).all() for s in stages)
    # Another class for RoI (1, 1) changes its logits at every stage and nothing else.
    other = labels.copy()
    other[1, 1] = 0
    changed, _ = run_head(graphdef, state, make_pyramid(), queries, jnp.asarray(BOXES), other, jnp.asarray(ROI_VALID))
    for a, b in zip(stages, changed):
        assert not np.allclose(a[1, 1], b[1, 1])
        mask = np.ones((2, 3), bool)
        mask[1, 1] = False
        np.testing.assert_array_equal(a[mask], b[mask])


def loss_case(with_box_masks=False):
    """Two images, 3 objects and 6 queries each (4 positives): ``(batch, queries)``."""
    rng = np.random.default_rng(5)
    b, q, m = 2, 6, 3
    masks = np.zeros((b, m, CANVAS, CANVAS), bool)
    yy, xx = np.mgrid[:CANVAS, :CANVAS]
    masks[0, 0] = (xx - 20) ** 2 + (yy - 25) ** 2 < 15 ** 2
    masks[0, 1] = (xx > 30) & (yy > 5) & (xx - 30 < 30 - (yy - 5))
    masks[1, 0] = (np.abs(xx - 30) < 4) | (np.abs(yy - 20) < 3)
    masks[1, 0, :, 50:] = False
    masks[1, 0, 40:] = False
    masks[1, 2] = (xx > 8) & (xx < 30) & (yy > 35) & (yy < 48)
    boxes = np.array([[[5, 9, 36, 41], [28, 3, 62, 33], [0, 0, 9, 9], [2, 2, 40, 44], [30, 6, 60, 30], [1, 1, 2, 2]],
                      [[22, 14, 47, 38], [7, 33, 31, 50], [0, 0, 20, 20], [25, 10, 49, 39], [1, 1, 3, 3],
                       [9, 30, 33, 52]]], np.float32)
    boxes += rng.uniform(0.1, 0.9, boxes.shape).astype(np.float32)
    matched = np.array([[0, 1, 0, 0, 1, 2], [0, 2, 1, 0, 0, 2]], np.int32)
    positive = np.array([[1, 1, 0, 1, 1, 0], [1, 1, 0, 1, 0, 1]], bool)
    valid = np.array([[True, True, False], [True, False, True]])
    batch = Batch(images=np.zeros((b, CANVAS, CANVAS, 3), np.uint8), image_sizes=IMAGE_SIZES,
                  orig_sizes=IMAGE_SIZES, image_ids=np.arange(b, dtype=np.int32),
                  boxes=np.zeros((b, m, 4), np.float32), labels=np.array([[1, 4, 0], [2, 0, 3]], np.int32),
                  valid=valid, is_crowd=np.zeros((b, m), bool), masks=masks)
    queries = QueryOutputs(queries=jnp.asarray(rng.normal(size=(b, q, C)), jnp.float32), boxes=jnp.asarray(boxes),
                           matched=jnp.asarray(matched), positive=jnp.asarray(positive),
                           match_quality=jnp.asarray(rng.random((b, q)).astype(np.float32)))
    return batch, queries


@pytest.mark.slow  # ~15 s compile; the end-to-end training test (slow) and the numpy loss tests cover it too
def test_jit_train_step_of_the_head_decreases_its_losses():
    """Adam on the head's parameters, one batch: the BAR loss goes down."""
    graphdef, state = build(max_train_rois=4)
    batch, queries = loss_case()
    pyramid = make_pyramid(6)
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            return nnx.merge(graphdef, p).losses(pyramid, batch, queries)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, metrics

    params, opt_state = state, tx.init(state)
    history = []
    for _ in range(10):
        params, opt_state, loss, metrics = step(params, opt_state)
        history.append(jax.device_get(metrics))
    first, last = history[0], history[-1]
    assert all(np.isfinite(v) for v in last.values())
    assert float(first["seg/rois_per_image"]) == 4.0 and float(first["seg/dropped_rois"]) == 0.0
    # Stage 0 (every cell) learns fast; the band stages of a 4- and 2-channel head slowly.
    assert last["mask/loss_0"] < 0.7 * first["mask/loss_0"], (first["mask/loss_0"], last["mask/loss_0"])
    assert last["loss_mask"] < 0.95 * first["loss_mask"], (first["loss_mask"], last["loss_mask"])
    assert float(first["mask/band_cells_2"]) > 0 and float(first["mask/band_cells_3"]) > 0


def test_semantic_loss_is_the_bce_against_the_foreground_union():
    """``loss.semantic_weight > 0`` (the original RefineMask's semantic loss): one more 1×1
    (C + 1 parameters); its target is the union of the valid masks resized to the P2 map."""
    crit = RefineMaskCriterion(semantic_weight=1.0)
    graphdef, state = build(max_train_rois=4, loss=crit)
    plain = nnx.split(abstract_init(lambda: RefineMaskHead(levels=LEVELS, channels=C, num_classes=CLASSES,
                                                           rngs=nnx.Rngs(0))), nnx.Param)[1]
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    assert count(state) - count(plain) == C + 1
    batch, queries = loss_case()
    pyramid = make_pyramid(7)
    total, metrics = jax.jit(lambda s: nnx.merge(graphdef, s).losses(pyramid, batch, queries))(state)
    _, semantic = run_head(graphdef, state, pyramid, queries.queries[:, :1], queries.boxes[:, :1],
                           np.zeros((2, 1), np.int32), jnp.ones((2, 1), bool))
    assert semantic.shape == (2, 16, 16)
    expected = 0.0
    for b in range(2):
        union = np.any(batch.masks[b][batch.valid[b]], axis=0).astype(np.float64)
        target = union.reshape(16, 4, 16, 4)[:, 1:3, :, 1:3].mean(axis=(1, 3)) >= 0.5  # bilinear ×1/4 = 2×2 mean
        h, w = -(-IMAGE_SIZES[b] // 4)
        logit = semantic[b, :h, :w].astype(np.float64)
        t = target[:h, :w]
        expected += np.mean(np.maximum(logit, 0) - logit * t + np.log1p(np.exp(-np.abs(logit)))) / 2
    np.testing.assert_allclose(metrics["loss_mask_semantic"], expected, rtol=1e-5)
    np.testing.assert_allclose(total, metrics["loss_mask"] + metrics["loss_mask_semantic"], rtol=1e-6)


def test_foreground_target_from_box_frame_masks_matches_full_masks():
    """Box-frame coverage grids (``data.mask_format='box'``) give the full-mask target up to
    cells on the mask border (the grids are a coverage approximation)."""
    from msvision.data.box_masks import box_frame_masks

    batch, _ = loss_case()
    full = np.asarray(foreground_target(jnp.asarray(batch.masks), jnp.asarray(batch.valid), (16, 16), 4))
    frames, grids = zip(*(box_frame_masks(m, 32) for m in batch.masks))
    grids, frames = np.stack(grids), np.stack(frames)
    boxed = np.asarray(foreground_target(jnp.asarray(grids), jnp.asarray(batch.valid), (16, 16), 4,
                                         jnp.asarray(frames)))
    assert full.any() and (full != boxed).mean() < 0.03


@pytest.mark.slow  # one more head compile
def test_masks_do_not_depend_on_the_batch_padding():
    """An image alone and padded into a larger canvas with garbage outside its valid cells:
    RoIAlign border rules, semantic convolutions and sampling all see the unpadded image."""
    graphdef, state = build()
    rng = np.random.default_rng(9)
    h, w = 50, 58
    alone = {l: rng.normal(size=(1, -(-h // 2 ** l), -(-w // 2 ** l), C)).astype(np.float32) for l in LEVELS}
    padded = {}
    for l, x in alone.items():
        canvas = rng.normal(size=(1, CANVAS >> l, CANVAS >> l, C)).astype(np.float32) * 5.0
        canvas[:, :x.shape[1], :x.shape[2]] = x
        padded[l] = canvas
    boxes = jnp.asarray([[[30, 20, 57.5, 49.5], [-5, 10, 20, 60], [3, 4, 40, 30]]], jnp.float32)
    queries = jnp.asarray(rng.normal(size=(1, 3, C)), jnp.float32)
    labels = np.array([[1, 2, 3]], np.int32)
    valid = jnp.ones((1, 3), bool)
    a, _ = run_head(graphdef, state, {l: jnp.asarray(v) for l, v in alone.items()}, queries, boxes, labels, valid,
                    [[h, w]])
    b, _ = run_head(graphdef, state, {l: jnp.asarray(v) for l, v in padded.items()}, queries, boxes, labels, valid,
                    [[h, w]])
    for sa, sb in zip(a, b):
        np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # one predict compile
def test_predict_one_mask_per_query_and_class_scored_by_eq_5_3():
    """Class-specific masks: a query detected with two classes gets two masks, each the head's
    112² probabilities for that (query, class) pair; score = class score × mean pasted
    probability over p > 0.5 (eq. 5.3), re-sorted."""
    from msvision.models.heads.roi_mask.postprocess import paste_masks
    from msvision.structures import Detections

    graphdef, state = build()
    rng = np.random.default_rng(7)
    q = 5
    boxes = np.concatenate([BOXES, BOXES[:, :2] + 3], 1)
    queries = QueryOutputs(queries=jnp.asarray(rng.normal(size=(2, q, C)), jnp.float32), boxes=jnp.asarray(boxes),
                           detection_queries=jnp.asarray([[4, 1, 4, 0], [2, 2, 3, 0]], jnp.int32))
    labels = np.array([[1, 0, 2, 0], [0, 1, 1, 0]], np.int32)
    dets = Detections(boxes=jnp.zeros((2, 4, 4)), scores=jnp.asarray([[0.9, 0.8, 0.5, 0.0], [0.7, 0.6, 0.4, 0.0]]),
                      labels=jnp.asarray(labels), valid=jnp.asarray([[True, True, True, False]] * 2))
    batch = Batch(images=np.zeros((2, CANVAS, CANVAS, 3), np.uint8), image_sizes=IMAGE_SIZES, orig_sizes=IMAGE_SIZES,
                  image_ids=np.arange(2, dtype=np.int32), boxes=np.zeros((2, 1, 4), np.float32),
                  labels=np.zeros((2, 1), np.int32), valid=np.zeros((2, 1), bool), is_crowd=np.zeros((2, 1), bool))
    pyramid = make_pyramid(8)
    out = jax.jit(lambda st: nnx.merge(graphdef, st).predict(pyramid, batch, dets, queries))(state)
    assert out.masks.shape == (2, 4, 112, 112)

    # Oracle: the network on the three detected (query, class) pairs of each image, in pair order.
    det_q = np.asarray(queries.detection_queries)
    pairs = [sorted({(det_q[i, k], labels[i, k]) for k in range(3)}) for i in range(2)]
    index = np.array([[p[0] for p in pl] for pl in pairs])
    pair_labels = np.array([[p[1] for p in pl] for pl in pairs], np.int32)
    take = lambda x: jnp.asarray(np.asarray(x)[np.arange(2)[:, None], index])  # noqa: E731
    probs = np.asarray(jax.jit(lambda st: nnx.merge(graphdef, st).mask_probabilities(
        pyramid, jnp.asarray(IMAGE_SIZES), take(queries.queries), take(queries.boxes), jnp.asarray(pair_labels),
        jnp.ones((2, 3), bool)))(state))
    for image in range(2):
        h, w = IMAGE_SIZES[image]
        expected = []
        for k in range(3):
            mask = probs[image, pairs[image].index((det_q[image, k], labels[image, k]))]
            pasted = np.asarray(paste_masks(jnp.asarray(mask[None]), jnp.asarray(boxes[image, det_q[image, k]][None]),
                                            CANVAS, CANVAS))[0, :h, :w]
            fg = pasted > 0.5
            expected.append((float(dets.scores[image, k]) * pasted[fg].sum() / (fg.sum() + 1e-6), k, mask))
        expected.sort(key=lambda t: -t[0])
        np.testing.assert_allclose(out.scores[image, :3], [s for s, _, _ in expected], rtol=2e-4, atol=1e-6)
        for slot, (_, k, mask) in enumerate(expected):
            np.testing.assert_allclose(out.masks[image, slot], mask, rtol=1e-4, atol=1e-5)
            assert int(out.labels[image, slot]) == labels[image, k]
        assert not np.asarray(out.masks[image, 3]).any()
    # image 0: query 4 with classes 1 and 2 -> two different masks
    assert not np.allclose(probs[0, pairs[0].index((4, 1))], probs[0, pairs[0].index((4, 2))])
