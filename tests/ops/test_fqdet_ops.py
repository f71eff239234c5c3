"""Query ops of the FQDet heads (msvision.ops.queries) vs numpy oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msvision.ops import queries as Q


def test_select_topk_queries_vs_argsort():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 200)).astype(np.float32)
    valid = rng.uniform(size=(3, 200)) > 0.3
    idx, top = jax.jit(Q.select_topk_queries, static_argnums=2)(scores, valid, 25)
    idx = np.asarray(idx)
    assert idx.shape == (3, 25) and idx.dtype == np.int32
    for b in range(3):
        masked = np.where(valid[b], scores[b], -np.inf)
        expected = np.argsort(-masked, kind="stable")[:25]
        np.testing.assert_array_equal(idx[b], expected)
        assert valid[b, idx[b]].all()
        np.testing.assert_allclose(np.asarray(top[b]), scores[b, expected])
    with pytest.raises(ValueError):
        Q.select_topk_queries(scores, valid, 201)


def test_inverse_sigmoid_formula():
    x = np.array([-0.5, 0.0, 1e-4, 0.2, 0.5, 0.9, 0.9995, 1.0, 1.3], np.float32)
    eps = 1e-3
    xc = np.clip(x, 0, 1)
    expected = np.log(np.maximum(xc, eps) / np.maximum(1 - xc, eps))
    np.testing.assert_allclose(np.asarray(Q.inverse_sigmoid(jnp.asarray(x), eps)), expected, rtol=1e-6, atol=1e-6)
    # inverse of the sigmoid away from the clamps
    y = np.linspace(-4, 4, 9).astype(np.float32)
    np.testing.assert_allclose(np.asarray(Q.inverse_sigmoid(jax.nn.sigmoid(y))), y, atol=1e-4)


def _np_giou(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    elt = np.minimum(a[:, None, :2], b[None, :, :2])
    erb = np.maximum(a[:, None, 2:], b[None, :, 2:])
    enc = np.prod(erb - elt, -1)
    return inter / union - (enc - union) / enc


def test_detr_matching_cost_vs_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(12, 5)).astype(np.float32)
    xy = rng.uniform(0, 60, (12, 2))
    pred = np.concatenate([xy, xy + rng.uniform(2, 30, (12, 2))], 1).astype(np.float32)
    gxy = rng.uniform(0, 60, (4, 2))
    gt = np.concatenate([gxy, gxy + rng.uniform(2, 30, (4, 2))], 1).astype(np.float32)
    labels = np.array([0, 3, 3, 4], np.int32)
    hw = np.array([80.0, 100.0], np.float32)
    cost = np.asarray(jax.jit(Q.detr_matching_cost)(logits, pred, gt, labels, hw))

    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = np.zeros((12, 4))
    for i in range(12):
        for j in range(4):
            pj = p[i, labels[j]]
            cls = 0.25 * (1 - pj) ** 2 * -np.log(pj + 1e-8) - 0.75 * pj**2 * -np.log(1 - pj + 1e-8)
            cxcywh = lambda b: np.array([(b[0] + b[2]) / 2 / 100, (b[1] + b[3]) / 2 / 80,  # noqa: E731
                                         (b[2] - b[0]) / 100, (b[3] - b[1]) / 80])
            l1 = np.abs(cxcywh(pred[i]) - cxcywh(gt[j])).sum()
            expected[i, j] = 2 * cls + 5 * l1 - 2 * _np_giou(pred[i : i + 1], gt[j : j + 1])[0, 0]
    np.testing.assert_allclose(cost, expected, rtol=1e-4, atol=1e-4)


def test_topk_class_pairs_vs_numpy():
    rng = np.random.default_rng(2)
    scores = rng.uniform(size=(2, 7, 4)).astype(np.float32)
    qids, labels, top = jax.jit(Q.topk_class_pairs, static_argnums=1)(scores, 10)
    for b in range(2):
        flat = scores[b].reshape(-1)
        order = np.argsort(-flat, kind="stable")[:10]
        np.testing.assert_array_equal(np.asarray(qids[b]), order // 4)
        np.testing.assert_array_equal(np.asarray(labels[b]), order % 4)
        np.testing.assert_allclose(np.asarray(top[b]), flat[order])
    assert Q.topk_class_pairs(jnp.asarray(scores), 1000)[0].shape == (2, 28)  # clipped to Q·K
