"""Losses vs torchvision.ops and independent numpy formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msvision.ops import losses as _L


class _Jitted:
    """Every loss jitted once per keyword set (eager dispatch compiles op by op)."""

    def __getattr__(self, name):
        fn = getattr(_L, name)

        def call(*args, **kwargs):
            static = tuple(i for i, a in enumerate(args) if isinstance(a, (int, float)))
            return jax.jit(lambda *a: fn(*a, **kwargs), static_argnums=static)(*args)

        return call


L = _Jitted()


def random_boxes(rng, n, size=50.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1.0, 30.0, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def box_pairs(rng, n=64):
    """Pairs with overlap, disjoint pairs and identical pairs."""
    a, b = random_boxes(rng, n), random_boxes(rng, n)
    b[: n // 4] = a[: n // 4] + rng.normal(0, 2, (n // 4, 4)).astype(np.float32)
    b[: n // 4, 2:] = np.maximum(b[: n // 4, 2:], b[: n // 4, :2] + 0.5)
    b[-4:] = a[-4:]
    return a, b


@pytest.mark.oracle
def test_focal_vs_torchvision():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (7, 11)).astype(np.float32)
    for t in [(rng.random((7, 11)) < 0.3).astype(np.float32), rng.random((7, 11)).astype(np.float32)]:
        for alpha, gamma in [(0.25, 2.0), (-1.0, 1.5), (0.5, 0.0)]:
            ref = tv.ops.sigmoid_focal_loss(torch.from_numpy(x), torch.from_numpy(t), alpha, gamma).numpy()
            np.testing.assert_allclose(L.sigmoid_focal_loss(x, t, alpha, gamma), ref, rtol=1e-5, atol=1e-6)


def test_quality_focal_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (5, 9)).astype(np.float64)
    y = np.where(rng.random((5, 9)) < 0.3, rng.random((5, 9)), 0.0)
    p = 1 / (1 + np.exp(-x))
    ref = -(y * np.log(p) + (1 - y) * np.log(1 - p)) * np.abs(p - y) ** 2.0
    np.testing.assert_allclose(L.quality_focal_loss(x.astype(np.float32), y.astype(np.float32)), ref, rtol=1e-4, atol=1e-6)
    g = jax.grad(lambda z: L.quality_focal_loss(z, jnp.asarray(y, jnp.float32)).sum())(jnp.asarray(x, jnp.float32))
    assert np.all(np.isfinite(g))


def test_smooth_l1_and_l1():
    d = np.linspace(-2, 2, 41).astype(np.float32)
    t = np.zeros_like(d)
    np.testing.assert_allclose(L.smooth_l1_loss(d, t, 0.0), np.abs(d))
    np.testing.assert_allclose(L.l1_loss(d, t), np.abs(d))
    ref = np.where(np.abs(d) < 0.5, 0.5 * d**2 / 0.5, np.abs(d) - 0.25)
    np.testing.assert_allclose(L.smooth_l1_loss(d, t, 0.5), ref, rtol=1e-6)


@pytest.mark.oracle
def test_iou_losses_vs_torchvision():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(2)
    a, b = box_pairs(rng)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    for ours, ref in [
        (L.giou_loss, tv.ops.generalized_box_iou_loss),
        (L.diou_loss, tv.ops.distance_box_iou_loss),
        (L.ciou_loss, tv.ops.complete_box_iou_loss),
    ]:
        np.testing.assert_allclose(ours(a, b), ref(ta, tb, reduction="none").numpy(), rtol=1e-5, atol=1e-5)
        # elementwise over leading dims
        assert ours(a.reshape(8, 8, 4), b.reshape(8, 8, 4)).shape == (8, 8)


def eiou_reference(p, t, smooth_point=0.1, eps=1e-6):
    """Peng & Yu extended IoU loss, written case by case in float64."""
    out = []
    for (px0, py0, px1, py1), (tx0, ty0, tx1, ty1) in zip(p.astype(np.float64), t.astype(np.float64)):
        # 1D "extended overlap" factors measured from the enclosing box corner.
        ex, ey = min(px0, tx0), min(py0, ty0)
        a, b = max(px0, tx0) - ex, min(px1, tx1) - ex  # x: intersection start / end
        c, d = max(py0, ty0) - ey, min(py1, ty1) - ey
        if a <= b and c <= d:
            inter = (b - a) * (d - c)  # ordinary intersection
        elif a > b and c <= d:
            inter = (b - a) * (c + d)
        elif a <= b and c > d:
            inter = (d - c) * (a + b)
        else:
            inter = 2 * (b * d - a * c)
        union = (px1 - px0) * (py1 - py0) + (tx1 - tx0) * (ty1 - ty0) - inter + eps
        u = 1 - inter / union
        out.append(0.5 * u * u / smooth_point if u < smooth_point else u - 0.5 * smooth_point)
    return np.array(out)


def test_eiou_vs_formula():
    rng = np.random.default_rng(3)
    a, b = box_pairs(rng, 200)
    np.testing.assert_allclose(L.eiou_loss(a, b), eiou_reference(a, b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(L.eiou_loss(a, b, smooth_point=0.3), eiou_reference(a, b, 0.3), rtol=1e-4, atol=1e-5)
    # Overlapping boxes: 1 - IoU inside the smooth form; identical boxes: 0.
    assert float(L.eiou_loss(a[-1], b[-1])) < 1e-6
    g = jax.grad(lambda x: L.eiou_loss(x, jnp.asarray(b)).sum())(jnp.asarray(a))
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


def test_ciou_alpha_no_gradient():
    a = jnp.array([[0.0, 0.0, 10.0, 20.0]])
    b = jnp.array([[2.0, 1.0, 14.0, 15.0]])
    g = jax.grad(lambda x: L.ciou_loss(x, b).sum())(a)
    assert np.all(np.isfinite(g))
    assert math.isfinite(float(L.ciou_loss(a, b)[0]))
