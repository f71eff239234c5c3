"""Matchers vs plain-loop numpy oracles and scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from msvision.ops import matching as Mt


# ----------------------------------------------------------------- oracles (loops)


def matcher_loop(iou, real, pos, neg, low_quality, crowd=None, ioa=None, ioa_thr=0.7):
    """detectron2 Matcher, one anchor at a time (plus crowd ignore and the max>0 guard)."""
    n, m = iou.shape
    matched = np.zeros(n, int)
    label = np.zeros(n, int)
    for i in range(n):
        best, bj = -np.inf, 0
        for j in range(m):
            if real[j] and iou[i, j] > best:
                best, bj = iou[i, j], j
        if best == -np.inf:
            continue
        matched[i] = bj
        label[i] = 1 if best >= pos else (-1 if best >= neg else 0)
    if low_quality:
        for j in range(m):
            if not real[j]:
                continue
            mx = max(iou[i, j] for i in range(n))
            if mx <= 0:
                continue
            for i in range(n):
                if iou[i, j] == mx:
                    label[i] = 1
    if crowd is not None:
        for i in range(n):
            if label[i] != 1 and any(crowd[j] and ioa[i, j] > ioa_thr for j in range(m)):
                label[i] = -1
    return matched, label


def topk_loop(iou, real, k):
    n, m = iou.shape
    cands = [[] for _ in range(n)]
    for j in range(m):
        if not real[j]:
            continue
        order = sorted(range(n), key=lambda i: (-iou[i, j], i))[:k]
        for r, i in enumerate(order):
            cands[i].append((r, -iou[i, j], j))
    matched = np.zeros(n, int)
    positive = np.zeros(n, bool)
    for i in range(n):
        if cands[i]:
            matched[i] = min(cands[i])[2]
            positive[i] = True
    return matched, positive


def quantized_iou(rng, n, m, levels=8):
    """IoU-like matrix with many exact ties."""
    x = np.floor(rng.random((n, m)) * levels) / levels
    x[rng.random((n, m)) < 0.3] = 0.0
    return x.astype(np.float32)


# ----------------------------------------------------------------- absolute


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_absolute_matching_vs_loop(seed):
    rng = np.random.default_rng(seed)
    n, m = 60, 9
    iou = quantized_iou(rng, n, m, levels=10)
    valid = rng.random(m) < 0.8
    crowd = valid & (rng.random(m) < 0.3)
    ioa = rng.random((n, m)).astype(np.float32)
    f = jax.jit(lambda *a: Mt.absolute_iou_matching(a[0], a[1], gt_is_crowd=a[2], crowd_ioa=a[3], pos_iou=0.5, neg_iou=0.4))
    got_m, got_l = map(np.asarray, f(iou, valid, crowd, ioa))
    ref_m, ref_l = matcher_loop(iou, valid & ~crowd, 0.5, 0.4, True, valid & crowd, ioa)
    np.testing.assert_array_equal(got_l, ref_l)
    np.testing.assert_array_equal(got_m[ref_l == 1], ref_m[ref_l == 1])
    # Without low-quality matches and without crowd.
    got_m, got_l = Mt.absolute_iou_matching(iou, valid, pos_iou=0.7, neg_iou=0.3, allow_low_quality=False)
    ref_m, ref_l = matcher_loop(iou, valid, 0.7, 0.3, False)
    np.testing.assert_array_equal(np.asarray(got_l), ref_l)
    np.testing.assert_array_equal(np.asarray(got_m)[ref_l != 0], ref_m[ref_l != 0])


def test_absolute_matching_no_gt_and_vmap():
    iou = np.random.default_rng(0).random((2, 10, 4)).astype(np.float32)
    valid = np.zeros((2, 4), bool)
    valid[1, 2] = True
    m, l = jax.vmap(lambda i, v: Mt.absolute_iou_matching(i, v))(iou, valid)
    assert np.all(np.asarray(l[0]) == 0)  # no real gt: all negative
    assert np.all(np.asarray(m[1])[np.asarray(l[1]) == 1] == 2)
    assert np.asarray(l[1])[np.argmax(iou[1, :, 2])] == 1  # low-quality match


# ----------------------------------------------------------------- top-k


@pytest.mark.parametrize("seed,n,m,k", [(0, 40, 6, 5), (1, 30, 10, 4), (2, 12, 8, 3), (3, 7, 5, 9)])
def test_topk_matching_vs_loop(seed, n, m, k):
    """Ties, padded gts, crowd, and more gt than anchors / k (m*k > n, k > n)."""
    rng = np.random.default_rng(seed)
    iou = quantized_iou(rng, n, m, levels=5)
    valid = rng.random(m) < 0.8
    crowd = rng.random(m) < 0.2
    matched, positive = jax.jit(Mt.topk_anchor_matching, static_argnums=2)(iou, valid, k, gt_is_crowd=crowd)
    ref_m, ref_p = topk_loop(iou, valid & ~crowd, k)
    np.testing.assert_array_equal(np.asarray(positive), ref_p)
    np.testing.assert_array_equal(np.asarray(matched), ref_m)


def test_topk_candidates_and_subset_matching():
    rng = np.random.default_rng(5)
    n, m, k, q = 50, 6, 4, 20
    iou = quantized_iou(rng, n, m, levels=6)
    valid = np.array([1, 1, 0, 1, 1, 1], bool)
    idx, vals, cv = Mt.topk_candidates_per_gt(iou, valid, k)
    assert idx.shape == (m, k) and not np.asarray(cv)[2].any()
    for j in np.flatnonzero(valid):
        ref = sorted(range(n), key=lambda i: (-iou[i, j], i))[:k]
        np.testing.assert_array_equal(np.asarray(idx)[j], ref)
        np.testing.assert_allclose(np.asarray(vals)[j], iou[ref, j])
    # Queries = a random subset of anchors: the same result as the loop restricted to
    # candidates computed over all anchors.
    sel = rng.choice(n, q, replace=False)
    matched, positive = Mt.topk_matching_from_candidates(idx, cv, jnp.asarray(sel), iou[sel])
    # Oracle: full top-k assignment over all anchors, restricted to the selected ones.
    cands = {}
    for j in np.flatnonzero(valid):
        for r, i in enumerate(sorted(range(n), key=lambda i: (-iou[i, j], i))[:k]):
            cands.setdefault(i, []).append((r, -iou[i, j], j))
    for qi, a in enumerate(sel):
        assert bool(positive[qi]) == (a in cands)
        if a in cands:
            assert int(matched[qi]) == min(cands[a])[2]


def test_crowd_ignore_mask():
    ioa = np.array([[0.9, 0.9], [0.5, 0.1], [0.8, 0.0]], np.float32)
    mask = Mt.crowd_ignore_mask(ioa, np.array([True, False]), np.array([True, True]))
    np.testing.assert_array_equal(np.asarray(mask), [True, False, True])


# ----------------------------------------------------------------- Hungarian


def assignment_cost(cost, matched, positive):
    rows = np.flatnonzero(positive)
    return cost[rows, np.asarray(matched)[rows]].sum()


def test_hungarian_exact_jit_vmap():
    rng = np.random.default_rng(0)
    b, n, m = 3, 12, 7
    cost = rng.normal(size=(b, n, m)).astype(np.float32)
    valid = rng.random((b, m)) < 0.7
    valid[0] = False  # an image without gt
    f = jax.jit(jax.vmap(Mt.hungarian_matching))
    matched, positive = map(np.asarray, f(cost, valid))
    for i in range(b):
        cols = np.flatnonzero(valid[i])
        assert positive[i].sum() == len(cols)
        assert set(matched[i][positive[i]]) == set(cols)
        if len(cols):
            r, c = linear_sum_assignment(cost[i][:, cols])
            np.testing.assert_allclose(assignment_cost(cost[i], matched[i], positive[i]), cost[i][r, cols[c]].sum(), rtol=1e-5)
    # More gt than predictions: every prediction matched, once.
    c2 = rng.random((3, 5)).astype(np.float32)
    m2, p2 = Mt.hungarian_matching(c2, np.ones(5, bool))
    assert np.asarray(p2).all() and len(set(np.asarray(m2).tolist())) == 3
    r, c = linear_sum_assignment(c2)
    np.testing.assert_allclose(assignment_cost(c2, m2, p2), c2[r, c].sum(), rtol=1e-6)
    # Zero gradient, no error under grad.
    g = jax.grad(lambda x: jnp.sum(x * Mt.hungarian_matching(x, jnp.ones(7, bool))[1][:, None]))(jnp.asarray(cost[1]))
    assert np.all(np.isfinite(g))


def test_auction_matching_near_optimal():
    rng = np.random.default_rng(1)
    b, n, m = 2, 40, 10
    cost = rng.random((b, n, m)).astype(np.float32)
    cost[1, :, 3] = np.inf  # a forbidden column still ends up matched (only choice)
    valid = np.ones((b, m), bool)
    valid[0, -3:] = False
    matched, positive = map(np.asarray, jax.jit(jax.vmap(Mt.auction_matching))(cost, valid))
    for i in range(b):
        cols = np.flatnonzero(valid[i])
        assert positive[i].sum() == len(cols)
        assert sorted(matched[i][positive[i]].tolist()) == cols.tolist()
        finite_cols = [j for j in cols if np.isfinite(cost[i][:, j]).all()]
        r, c = linear_sum_assignment(cost[i][:, finite_cols])
        opt = cost[i][r, np.asarray(finite_cols)[c]].sum()
        rows = np.flatnonzero(positive[i] & np.isin(matched[i], finite_cols))
        got = cost[i][rows, matched[i][rows]].sum()
        span = cost[i][:, finite_cols].max() - cost[i][:, finite_cols].min()
        assert got <= opt + len(cols) * 1e-3 * span + 1e-5
