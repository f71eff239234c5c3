"""IdConv / SFM gradients: hand-written VJP vs autodiff of the dense reference (float64)
and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.test_util import check_grads

from msvision.ops.sps import select_and_split, sfm, sps_from_dense
from msvision.ops.sps.id_conv import id_conv, neighbour_ids
from msvision.ops.sps.reference import id_conv_dense_reference, sfm_dense_reference


split = jax.jit(select_and_split, static_argnums=2)


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def partial_sps(seed, rois=2, size=3, channels=3, ks=(6,), dtype=np.float32):
    """An SPS after len(ks) updates with partial selection: actives and passives mixed."""
    rng = np.random.default_rng(seed)
    dense = jnp.asarray(rng.standard_normal((rois, size, size, channels)).astype(dtype))
    sps = sps_from_dense(dense, jnp.ones((rois,), bool))
    for k in ks:
        sps, _ = split(sps, jnp.asarray(rng.standard_normal(sps.num_active), dense.dtype), k)
        sps = sps.replace(act=sps.act + jnp.asarray(rng.standard_normal(sps.act.shape).astype(dtype)))
    return sps, rng


def test_neighbour_ids_read_the_pad_outside_the_grid():
    sps, _ = partial_sps(0)
    assert sps.resolution == 6
    ids = np.asarray(neighbour_ids(sps.id_map, sps.act_xy, sps.act_roi, 6, sps.pad_id))
    assert ids.shape == (sps.num_active, 9)
    np.testing.assert_array_equal(ids[:, 4], np.arange(sps.num_active))  # centre tap = itself
    np.testing.assert_array_equal(np.delete(ids, 4, axis=1), sps.pad_id)  # every other tap leaves the 6x6 grid
    ids1 = np.asarray(neighbour_ids(sps.id_map, sps.act_xy, sps.act_roi, 1, sps.pad_id))
    size = sps.resolution
    id_map, act_roi = np.asarray(sps.id_map), np.asarray(sps.act_roi)
    for a, (x, y) in enumerate(np.asarray(sps.act_xy)):
        for k in range(9):
            nx, ny = x + k % 3 - 1, y + k // 3 - 1
            inside = 0 <= nx < size and 0 <= ny < size
            expected = id_map[act_roi[a], ny, nx] if inside else sps.pad_id
            assert ids1[a, k] == expected


@pytest.mark.parametrize("dilation", [1, 3, 5])
def test_id_conv_gradients_match_dense_autodiff_float64(x64, dilation):
    sps, rng = partial_sps(dilation, dtype=np.float64)
    table = sps.feature_table()
    weight = jnp.asarray(rng.standard_normal((9 * 3, 4)))
    bias = jnp.asarray(rng.standard_normal(4))
    cotangent = jnp.asarray(rng.standard_normal((sps.num_active, 4)))
    args = (sps.id_map, sps.act_xy, sps.act_roi)

    def loss(fn):
        return lambda t, w, b: jnp.sum(fn(t, *args, w, b, dilation) * cotangent)

    ours = jax.jit(jax.grad(loss(id_conv), argnums=(0, 1, 2)))(table, weight, bias)
    dense = jax.jit(jax.grad(loss(id_conv_dense_reference), argnums=(0, 1, 2)))(table, weight, bias)
    assert ours[0].dtype == jnp.float64
    for a, b in zip(ours, dense):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # Both actives and passives got gradients (the test covers both paths).
    assert float(jnp.abs(ours[0][:sps.num_active]).sum()) > 0
    assert float(jnp.abs(ours[0][sps.num_active:sps.pad_id]).sum()) > 0
    np.testing.assert_array_equal(ours[0][-1], 0.0)


def test_id_conv_and_sfm_finite_differences(x64):
    """Finite differences w.r.t. the actives, passives, weights and biases (the pad row is
    a constant zero, built inside the function)."""
    sps, rng = partial_sps(4, rois=1, size=2, channels=2, ks=(2,), dtype=np.float64)
    args = (sps.id_map, sps.act_xy, sps.act_roi)
    table = lambda act, pas: sps.replace(act=act, pas=pas).feature_table()
    weight = jnp.asarray(rng.standard_normal((18, 3)))
    bias = jnp.asarray(rng.standard_normal(3))
    check_grads(jax.jit(lambda a, p, w, b: id_conv(table(a, p), *args, w, b, 1)), (sps.act, sps.pas, weight, bias),
                order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
    weights = jnp.asarray(rng.standard_normal((3, 18, 3)))
    biases = jnp.asarray(rng.standard_normal((3, 3)))
    check_grads(jax.jit(lambda a, p, w, b: sfm(table(a, p), *args, w, b, impl="xla")),
                (sps.act, sps.pas, weights, biases),
                order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_sfm_gradients_match_dense_reference_float32():
    sps, rng = partial_sps(9, rois=3, size=3, channels=4, ks=(10, 20))
    table = sps.feature_table()
    weights = jnp.asarray(0.3 * rng.standard_normal((3, 36, 5)), jnp.float32)
    biases = jnp.asarray(0.1 * rng.standard_normal((3, 5)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((sps.num_active, 5)), jnp.float32)
    args = (sps.id_map, sps.act_xy, sps.act_roi)
    ours = jax.jit(jax.value_and_grad(lambda t, w, b: jnp.sum(sfm(t, *args, w, b, impl="xla") * cotangent),
                                      argnums=(0, 1, 2)))(table, weights, biases)
    dense = jax.jit(jax.value_and_grad(lambda t, w, b: jnp.sum(sfm_dense_reference(t, *args, w, b) * cotangent),
                                       argnums=(0, 1, 2)))(table, weights, biases)
    np.testing.assert_allclose(ours[0], dense[0], rtol=1e-5)
    for a, b in zip(ours[1], dense[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_vjp_keeps_no_im2col_residual():
    """The saved residuals are (table, ids, W) only: nothing of size A x 9F."""
    sps, rng = partial_sps(1, rois=2, size=3, channels=8, ks=(8,))
    table = sps.feature_table()
    weight = jnp.asarray(rng.standard_normal((72, 4)), jnp.float32)
    bias = jnp.zeros(4, jnp.float32)
    _, vjp = jax.vjp(lambda t, w: id_conv(t, sps.id_map, sps.act_xy, sps.act_roi, w, bias, 1), table, weight)
    sizes = sorted(x.size for x in jax.tree_util.tree_leaves(vjp) if hasattr(x, "size"))
    assert max(sizes) < sps.num_active * 9 * 8
    assert table.size in sizes and weight.size in sizes


def test_passive_gradient_methods_agree():
    from msvision.ops.sps.id_conv import passive_gradient

    sps, rng = partial_sps(3, rois=2, size=3, channels=4, ks=(6, 10))
    ids = neighbour_ids(sps.id_map, sps.act_xy, sps.act_roi, 1, sps.pad_id)
    values = jnp.asarray(rng.standard_normal((sps.num_active, 9, 4)), jnp.float32)
    rows = sps.pad_id + 1
    sums = jax.jit(lambda v, i: [passive_gradient(v, i, sps.num_active, rows, m) for m in ("sorted", "scatter")])
    sorted_sum, scatter_sum = sums(values, ids)
    expected = np.zeros((rows - sps.num_active, 4))
    ids_np, values_np = np.asarray(ids), np.asarray(values)
    for a, k in np.ndindex(ids_np.shape):
        if sps.num_active <= ids_np[a, k] < sps.pad_id:
            expected[ids_np[a, k] - sps.num_active] += values_np[a, k]
    np.testing.assert_allclose(sorted_sum, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scatter_sum, expected, rtol=1e-5, atol=1e-5)
