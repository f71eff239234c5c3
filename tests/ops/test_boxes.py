"""Box ops vs torchvision.ops and torchvision's BoxCoder."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from msvision.ops import boxes as _B


class _Jitted:
    """Box ops jitted (eager dispatch compiles op by op, slow on a loaded CPU)."""

    def __getattr__(self, name):
        fn = getattr(_B, name)
        return lambda *args: jax.jit(fn, static_argnums=tuple(i for i, a in enumerate(args) if isinstance(a, tuple)))(*args)


B = _Jitted()


def random_boxes(rng, n, size=100.0, min_wh=1.0, max_wh=40.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(min_wh, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_area_and_formats():
    b = np.array([[1.0, 2.0, 4.0, 8.0], [0.0, 0.0, 0.0, 5.0]], np.float32)
    np.testing.assert_allclose(B.box_area(b), [18.0, 0.0])
    c = B.box_xyxy_to_cxcywh(b)
    np.testing.assert_allclose(c[0], [2.5, 5.0, 3.0, 6.0])
    np.testing.assert_allclose(B.box_cxcywh_to_xyxy(c), b, atol=1e-6)


def test_iou_degenerate_and_ioa():
    b1 = np.array([[0, 0, 0, 0], [0, 0, 10, 10]], np.float32)
    b2 = np.array([[0, 0, 0, 0], [5, 0, 15, 10], [0, 0, 5, 10]], np.float32)
    iou = np.asarray(B.box_iou(b1, b2))
    assert np.all(np.isfinite(iou))
    np.testing.assert_allclose(iou[0], 0.0)
    np.testing.assert_allclose(iou[1], [0.0, 50 / 150, 0.5], rtol=1e-6)
    ioa = np.asarray(B.box_ioa(b1, b2))
    np.testing.assert_allclose(ioa[1], [0.0, 0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(ioa[0], 0.0)
    np.testing.assert_allclose(B.box_ioa(b2[2:], b1[1:]), [[1.0]])
    np.testing.assert_allclose(B.elementwise_box_iou(b1, b2[:2]), [0.0, 50 / 150], rtol=1e-6)
    giou = np.asarray(B.generalized_box_iou(b1, b1))
    assert np.all(np.isfinite(giou))


def test_clip_and_scale():
    b = jnp.array([[[-5.0, 3.0, 50.0, 70.0]], [[1.0, -1.0, 2.0, 2.0]]])  # [2, 1, 4]
    sizes = jnp.array([[60, 40], [10, 10]])  # (h, w)
    out = B.clip_boxes(b, sizes[:, None, :])
    np.testing.assert_allclose(out, [[[0, 3, 40, 60]], [[1, 0, 2, 2]]])
    np.testing.assert_allclose(B.scale_boxes(b[0], jnp.array([2.0, 0.5])), [[-10, 1.5, 100, 35]])
    np.testing.assert_allclose(B.scale_boxes(b[0], 2.0), 2 * b[0])


@pytest.mark.oracle
def test_iou_giou_vs_torchvision():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(0)
    b1, b2 = random_boxes(rng, 37), random_boxes(rng, 23)
    t1, t2 = torch.from_numpy(b1), torch.from_numpy(b2)
    np.testing.assert_allclose(B.box_iou(b1, b2), tv.ops.box_iou(t1, t2).numpy(), atol=1e-6)
    np.testing.assert_allclose(
        B.generalized_box_iou(b1, b2), tv.ops.generalized_box_iou(t1, t2).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(
        B.elementwise_box_iou(b1[:23], b2), np.diag(tv.ops.box_iou(t1[:23], t2).numpy()), atol=1e-6
    )
    np.testing.assert_allclose(B.box_area(b1), tv.ops.box_area(t1).numpy(), rtol=1e-6)


@pytest.mark.oracle
def test_box_coder_vs_torchvision():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection._utils import BoxCoder

    rng = np.random.default_rng(1)
    anchors, gt = random_boxes(rng, 50), random_boxes(rng, 50)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights)
        ref = coder.encode_single(torch.from_numpy(gt), torch.from_numpy(anchors)).numpy()
        deltas = B.encode_box_deltas(gt, anchors, weights)
        np.testing.assert_allclose(deltas, ref, rtol=1e-5, atol=1e-5)
        # Large dw/dh exercise the clamp.
        d = rng.normal(0, 3, (50, 4)).astype(np.float32)
        ref_dec = coder.decode_single(torch.from_numpy(d), torch.from_numpy(anchors)).numpy()
        np.testing.assert_allclose(B.decode_box_deltas(d, anchors, weights), ref_dec, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(B.decode_box_deltas(deltas, anchors, weights), gt, rtol=1e-5, atol=1e-3)


def test_decode_clamp_and_jit_vmap():
    anchors = jnp.array([[0.0, 0.0, 16.0, 16.0]])
    out = B.decode_box_deltas(jnp.array([[0.0, 0.0, 100.0, 100.0]]), anchors)
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 1000.0, rtol=1e-4)
    f = jax.jit(jax.vmap(B.box_iou))
    rng = np.random.default_rng(2)
    x = np.stack([random_boxes(rng, 5) for _ in range(3)])
    np.testing.assert_allclose(f(x, x)[1], B.box_iou(x[1], x[1]), atol=1e-7)
    g = jax.grad(lambda b: B.box_iou(b, b[:2]).sum())(jnp.asarray(x[0]))
    assert np.all(np.isfinite(g))
