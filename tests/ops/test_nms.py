"""Padded tiled NMS vs torchvision.ops.nms / batched_nms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msvision.ops.nms import batched_nms_padded, nms_padded


def random_boxes(rng, n, size=120.0, max_wh=50.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(2.0, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def kept(indices, keep_valid):
    return np.asarray(indices)[np.asarray(keep_valid)]


@pytest.mark.oracle
@pytest.mark.parametrize("n,tile,thr", [(300, 64, 0.5), (257, 100, 0.3), (50, 256, 0.7), (1, 8, 0.5)])
def test_nms_vs_torchvision(n, tile, thr):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(n)
    b = random_boxes(rng, n)
    s = rng.random(n).astype(np.float32)
    ref = tv.ops.nms(torch.from_numpy(b), torch.from_numpy(s), thr).numpy()
    f = jax.jit(nms_padded, static_argnums=(2, 3), static_argnames="tile_size")
    idx, kv = f(b, s, thr, n + 5, tile_size=tile)
    assert idx.shape == (n + 5,) and idx.dtype == jnp.int32 and kv.shape == (n + 5,)
    np.testing.assert_array_equal(kept(idx, kv), ref)
    assert np.all(np.asarray(idx)[~np.asarray(kv)] == 0)
    # Truncated output: the first max_outputs of torchvision's result.
    idx, kv = f(b, s, thr, 10, tile_size=tile)
    np.testing.assert_array_equal(kept(idx, kv), ref[:10])


@pytest.mark.oracle
def test_nms_ties_and_duplicates():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(7)
    b = random_boxes(rng, 150)
    b[100:] = b[:50]  # exact duplicates
    s = np.round(rng.random(150), 1).astype(np.float32)  # many tied scores
    ref = tv.ops.nms(torch.from_numpy(b), torch.from_numpy(s), 0.5).numpy()
    idx, kv = jax.jit(lambda b, s: nms_padded(b, s, 0.5, 150, tile_size=32))(b, s)
    np.testing.assert_array_equal(kept(idx, kv), ref)


@pytest.mark.oracle
def test_valid_mask_and_vmap():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(3)
    b = np.stack([random_boxes(rng, 90) for _ in range(2)])
    s = rng.random((2, 90)).astype(np.float32)
    valid = rng.random((2, 90)) < 0.6
    f = jax.jit(jax.vmap(lambda b, s, v: nms_padded(b, s, 0.5, 40, valid=v, tile_size=16)))
    idx, kv = f(b, s, valid)
    for i in range(2):
        sel = np.flatnonzero(valid[i])
        ref = sel[tv.ops.nms(torch.from_numpy(b[i][sel]), torch.from_numpy(s[i][sel]), 0.5).numpy()]
        np.testing.assert_array_equal(kept(idx[i], kv[i]), ref[:40])


@pytest.mark.oracle
@pytest.mark.parametrize("tile", [37, 256])
def test_batched_nms_vs_torchvision(tile):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(11)
    n = 400
    b = random_boxes(rng, n, size=60.0)
    s = rng.random(n).astype(np.float32)
    labels = rng.integers(0, 5, n).astype(np.int32)
    valid = rng.random(n) < 0.9
    sel = np.flatnonzero(valid)
    ref = sel[
        tv.ops.batched_nms(
            torch.from_numpy(b[sel]), torch.from_numpy(s[sel]), torch.from_numpy(labels[sel]).long(), 0.5
        ).numpy()
    ]
    idx, kv = jax.jit(lambda *a: batched_nms_padded(*a, 0.5, n, valid=valid, tile_size=tile))(b, s, labels)
    np.testing.assert_array_equal(kept(idx, kv), ref)


def test_nms_all_invalid_and_empty():
    b = np.zeros((5, 4), np.float32)
    idx, kv = jax.jit(lambda b, s, v: nms_padded(b, s, 0.5, 3, valid=v))(b, np.ones(5, np.float32), np.zeros(5, bool))
    assert not np.asarray(kv).any() and idx.shape == (3,)
    idx, kv = nms_padded(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.5, 4)
    assert idx.shape == (4,) and not np.asarray(kv).any()
