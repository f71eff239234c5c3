"""Mask R-CNN++ and PointRend++ heads alone (thesis §5.4.1; tiny widths): losses are the per-RoI
mean BCE of the object's class against numpy crop-resize targets; each detection gets its class's
mask (PointRend: the subdivision of a numpy loop around the point head) and the eq. 5.3 score."""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.heads.mask_baselines import MaskRCNNHead, PointRendHead
from msvision.models.heads.roi_mask.postprocess import paste_masks
from msvision.models.heads.roi_mask.rois import select_train_rois
from msvision.structures import Batch, Detections, QueryOutputs

sys.path.insert(0, os.path.dirname(__file__))
from mask_baselines_oracles import CANVAS, IMAGE_SIZES, np_crop_resize, np_upsample2x, target_case  # noqa: E402

C = 16  # tiny pyramid width
NC = 3  # classes
LEVELS = (2, 3, 4, 5)


# --- heads -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def build(cls, **kw):
    head = cls(num_classes=NC, levels=LEVELS, channels=C, rngs=nnx.Rngs(0), **kw)
    graphdef, state = nnx.split(head)
    # Random, not-small biases and logit weights so that the masks are not constant.
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape) * 0.1, x.dtype), state)
    return graphdef, state


def make_pyramid(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return {l: jnp.asarray(rng.normal(size=(batch, CANVAS >> l, CANVAS >> l, C)), jnp.float32) for l in range(2, 8)}


def train_queries(boxes, seed=5):
    rng = np.random.default_rng(seed)
    q = boxes.shape[1]
    return QueryOutputs(queries=jnp.asarray(rng.normal(size=(2, q, C)), jnp.float32), boxes=jnp.asarray(boxes),
                        matched=jnp.asarray([[0, 1, 0], [1, 1, 0]], jnp.int32),
                        positive=jnp.asarray([[True, True, False], [True, False, True]]),
                        match_quality=jnp.asarray(rng.random((2, q)), jnp.float32))


@pytest.mark.parametrize("cls", [MaskRCNNHead, PointRendHead])
def test_losses_are_the_per_roi_mean_bce_of_the_object_class(cls):
    """Coarse (Mask R-CNN) loss: Σ over RoIs of the mean BCE of the object's class channel
    against the crop-resized target, averaged over images; PointRend adds its point loss."""
    kw = dict(point_level=2, train_points=12) if cls is PointRendHead else {}
    graphdef, state = build(cls, max_train_rois=2, **kw)
    batch, boxes, _ = target_case()
    queries = train_queries(boxes)
    pyramid = make_pyramid()

    @jax.jit
    def run(state, pyramid, batch, queries):
        head = nnx.merge(graphdef, state)
        rois = select_train_rois(queries, 2)
        take = lambda x: jnp.take_along_axis(x, rois.query_index[..., None], axis=1)  # noqa: E731
        logits = head(pyramid, batch.image_sizes, take(queries.queries), take(queries.boxes))
        kwargs = {"rng": jax.random.PRNGKey(0)} if cls is PointRendHead else {}
        return head.losses(pyramid, batch, queries, **kwargs), logits, rois

    (total, metrics), logits, rois = run(state, pyramid, batch, queries)
    logits = np.asarray(logits, np.float64)
    assert logits.shape == (2, 2, 28, 28, NC) and np.isfinite(logits).all()
    idx, gt = np.asarray(rois.query_index), np.asarray(rois.gt_index)
    expected = 0.0
    for b in range(2):
        for r in range(2):
            label = batch.labels[b, gt[b, r]]
            target = np_crop_resize(batch.masks[b, gt[b, r]].astype(np.float64), boxes[b, idx[b, r]]) >= 0.5
            x = logits[b, r, ..., label]
            expected += np.mean(np.maximum(x, 0) - x * target + np.log1p(np.exp(-np.abs(x)))) / 2
    np.testing.assert_allclose(metrics["loss_mask"], expected, rtol=1e-4)
    if cls is PointRendHead:
        assert np.isfinite(float(metrics["loss_mask_point"])) and float(metrics["loss_mask_point"]) > 0
        np.testing.assert_allclose(total, metrics["loss_mask"] + metrics["loss_mask_point"], rtol=1e-6)
    else:
        np.testing.assert_allclose(total, expected, rtol=1e-4)


def inference_case():
    rng = np.random.default_rng(7)
    boxes = np.array([[[4, 6, 40, 50], [10, 0, 61, 30], [20, 20, 31, 33]],
                      [[5, 3, 56, 47], [30, 10, 44, 30], [0, 0, 20, 20]]], np.float32)
    queries = QueryOutputs(queries=jnp.asarray(rng.normal(size=(2, 3, C)), jnp.float32), boxes=jnp.asarray(boxes),
                           detection_queries=jnp.asarray([[2, 1, 2, 0], [0, 0, 1, 0]], jnp.int32))
    dets = Detections(boxes=jnp.zeros((2, 4, 4)), scores=jnp.asarray([[0.9, 0.8, 0.5, 0.0], [0.7, 0.6, 0.4, 0.0]]),
                      labels=jnp.asarray([[1, 0, 2, 0], [0, 2, 1, 0]], jnp.int32),
                      valid=jnp.asarray([[True, True, True, False], [True, True, True, False]]))
    batch = Batch(images=np.zeros((2, CANVAS, CANVAS, 3), np.uint8), image_sizes=IMAGE_SIZES, orig_sizes=IMAGE_SIZES,
                  image_ids=np.arange(2, dtype=np.int32), boxes=np.zeros((2, 1, 4), np.float32),
                  labels=np.zeros((2, 1), np.int32), valid=np.zeros((2, 1), bool), is_crowd=np.zeros((2, 1), bool))
    return batch, queries, dets


@pytest.mark.parametrize("cls", [MaskRCNNHead, PointRendHead])
def test_predict_gives_each_detection_its_class_mask_and_eq_5_3_score(cls):
    """A query detected with two classes gets two different masks (class-specific); the score is
    s_cls · mean(p | p > 0.5) of the pasted mask; detections re-sorted; PointRend's masks are
    the subdivision of the coarse logits (numpy loop around the head's point logits)."""
    kw = dict(point_level=2, subdivision_points=60) if cls is PointRendHead else {}
    graphdef, state = build(cls, **kw)
    batch, queries, dets = inference_case()
    pyramid = make_pyramid(8)

    @jax.jit
    def run(state, pyramid, batch, dets, queries):
        head = nnx.merge(graphdef, state)
        coarse = head(pyramid, batch.image_sizes, queries.queries, queries.boxes)  # every query
        return head.predict(pyramid, batch, dets, queries), coarse

    out, coarse = run(state, pyramid, batch, dets, queries)
    size = 28 if cls is MaskRCNNHead else 112
    assert out.masks.shape == (2, 4, size, size)
    coarse = np.asarray(coarse)
    det_q, labels = np.asarray(queries.detection_queries), np.asarray(dets.labels)
    head = nnx.merge(graphdef, state)
    point_logits = jax.jit(lambda st, *args: nnx.merge(graphdef, st).point_logits(*args))
    for image in range(2):
        expected = []
        for k in range(3):
            q, label = det_q[image, k], labels[image, k]
            logits = coarse[image, q, ..., label].astype(np.float64)
            if cls is PointRendHead:
                logits = numpy_subdivision(head, functools.partial(point_logits, state), pyramid, image,
                                           queries.boxes[image, q], coarse[image, q], label)
            probs = 1 / (1 + np.exp(-logits))
            pasted = np.asarray(paste_masks(jnp.asarray(probs[None], jnp.float32), queries.boxes[image, q][None],
                                            CANVAS, CANVAS))[0, :IMAGE_SIZES[image, 0], :IMAGE_SIZES[image, 1]]
            fg = pasted > 0.5
            expected.append((float(dets.scores[image, k]) * pasted[fg].sum() / (fg.sum() + 1e-6), k, probs))
        expected.sort(key=lambda t: -t[0])
        np.testing.assert_allclose(out.scores[image, :3], [s for s, _, _ in expected], rtol=2e-4, atol=1e-6)
        for slot, (_, k, probs) in enumerate(expected):
            np.testing.assert_allclose(out.masks[image, slot], probs, rtol=1e-4, atol=2e-5)
            np.testing.assert_array_equal(out.labels[image, slot], labels[image, k])
        assert not bool(out.valid[image, 3]) and not np.asarray(out.masks[image, 3]).any()
    # Image 1 detects query 0 with classes 0 and 2: two masks of one RoI.
    slots = [int(np.flatnonzero((np.asarray(out.labels[1]) == c) & np.asarray(out.valid[1]))[0]) for c in (0, 2)]
    assert not np.allclose(out.masks[1, slots[0]], out.masks[1, slots[1]])


def numpy_subdivision(head, point_logits, pyramid, image, box, coarse, label):
    """Two steps of: ×2 upsampling (numpy), the P most uncertain cells (numpy), their logits from
    the head's point logits at the cell centres."""
    mask = coarse[..., label].astype(np.float64)
    sizes = jnp.asarray(IMAGE_SIZES[image:image + 1])
    pyr = {l: v[image:image + 1] for l, v in pyramid.items()}
    for _ in range(head.subdivision_steps):
        mask = np_upsample2x(mask)
        size = mask.shape[0]
        index = np.argsort(np.abs(mask).reshape(-1), kind="stable")[:head.subdivision_points]
        rows, cols = np.divmod(index, size)
        points = np.stack([(cols + 0.5) / size, (rows + 0.5) / size], -1)[None, None].astype(np.float32)
        values = point_logits(pyr, sizes, jnp.asarray(box)[None, None], jnp.asarray(coarse)[None, None],
                                   jnp.asarray(points), jnp.full((1, 1), label, jnp.int32))
        flat = mask.reshape(-1)
        flat[index] = np.asarray(values)[0, 0]
        mask = flat.reshape(size, size)
    return mask
