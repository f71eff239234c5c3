"""Pallas Triton MSDA kernels: interpret mode vs the XLA op, and CUDA lowering on CPU."""

from __future__ import annotations

import re

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from msvision.ops import platforms
from msvision.ops.msda import multiscale_deformable_attention
from msvision.ops.msda.triton_kernel import msda_backward_pallas, msda_forward_pallas


def make_inputs(seed, batch, queries, heads, channels, spatial_shapes, points):
    rng = np.random.default_rng(seed)
    total = sum(h * w for h, w in spatial_shapes)
    value = rng.standard_normal((batch, total, heads, channels)).astype(np.float32)
    locations = rng.uniform(-0.15, 1.15, (batch, queries, heads, len(spatial_shapes), points, 2)).astype(np.float32)
    weights = rng.random((batch, queries, heads, len(spatial_shapes), points)).astype(np.float32)
    return value, locations, weights


# (batch, queries, heads, channels, spatial_shapes, points); query counts that are not
# powers of two exercise the padding of the last query block, channels 6 the
# channel padding to 8.
SIZES = [
    (2, 5, 2, 4, ((4, 6), (2, 3)), 2),
    (1, 13, 3, 6, ((5, 5), (3, 2), (1, 1)), 1),
    (1, 16, 1, 8, ((7, 3),), 3),
]


@pytest.mark.parametrize("size", [0, pytest.param(1, marks=pytest.mark.slow), 2])
def test_interpret_forward_matches_xla(size):
    batch, queries, heads, channels, shapes, points = SIZES[size]
    value, locations, weights = make_inputs(size, batch, queries, heads, channels, shapes, points)
    expected = multiscale_deformable_attention(value, shapes, locations, weights, impl="xla")
    for block_queries in (4, 64):
        actual = msda_forward_pallas(jnp.asarray(value), shapes, jnp.asarray(locations), jnp.asarray(weights),
                                     block_queries=block_queries, interpret=True)
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [0, pytest.param(1, marks=pytest.mark.slow), 2])
def test_interpret_backward_matches_xla(size):
    batch, queries, heads, channels, shapes, points = SIZES[size]
    value, locations, weights = make_inputs(10 + size, batch, queries, heads, channels, shapes, points)
    output_grad = np.random.default_rng(size).standard_normal((batch, queries, heads * channels)).astype(np.float32)

    def grads(impl):
        loss = lambda v, l, w: jnp.sum(multiscale_deformable_attention(v, shapes, l, w, impl=impl) * output_grad)
        return jax.grad(loss, argnums=(0, 1, 2))(value, locations, weights)

    for actual, expected in zip(grads("triton_interpret"), grads("xla")):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(expected))))


def test_interpret_bfloat16_accumulates_in_float32():
    shapes = ((4, 4), (2, 2))
    value, locations, weights = make_inputs(3, 1, 6, 2, 8, shapes, 2)
    bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (value, locations, weights)]
    actual = multiscale_deformable_attention(*bf16[:1], shapes, *bf16[1:], impl="triton_interpret")
    assert actual.dtype == jnp.bfloat16
    expected = multiscale_deformable_attention(*[x.astype(jnp.float32) for x in bf16[:1]], shapes,
                                               *[x.astype(jnp.float32) for x in bf16[1:]], impl="xla")
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=2.0**-8, atol=1e-6)


def test_interpret_atomic_add_drops_duplicate_lanes():
    """Documents why the backward kernel uses one query per program by default.

    Pallas's interpret mode discharges ``atomic_add`` as gather + scatter-set, so
    two lanes of one vector atomic that hit the same address keep only one update
    (on a GPU both are added). If this ever starts passing with the exact sum,
    backward ``block_queries > 1`` becomes testable on CPU.
    """

    def kernel(index_ref, update_ref, init_ref, out_ref):
        del init_ref
        pltriton.atomic_add(out_ref, (index_ref[...],), update_ref[...])

    index = jnp.asarray([0, 0, 1, 1], jnp.int32)
    out = pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct((2,), jnp.float32),
                         input_output_aliases={2: 0}, interpret=True)(index, jnp.ones(4), jnp.zeros(2))
    assert np.asarray(out).tolist() != [2.0, 2.0]


def test_backward_block_of_queries_without_shared_pixels():
    """Backward block_queries > 1 is exact in interpret mode when no two queries of a
    block touch the same pixel: every query samples its own, distinct pixel centre."""
    shapes = ((4, 8),)
    queries = 8
    value = np.random.default_rng(0).standard_normal((1, 32, 1, 4)).astype(np.float32)
    centres = np.stack([(np.arange(queries) % 8 + 0.5) / 8, (2 * (np.arange(queries) // 8) + 0.5) / 4], -1)
    locations = centres.reshape(1, queries, 1, 1, 1, 2).astype(np.float32)
    weights = np.ones((1, queries, 1, 1, 1), np.float32)
    output_grad = np.ones((1, queries, 4), np.float32)
    args = (jnp.asarray(value), shapes, jnp.asarray(locations), jnp.asarray(weights), jnp.asarray(output_grad))
    one = msda_backward_pallas(*args, block_queries=1, interpret=True)
    block = msda_backward_pallas(*args, block_queries=8, interpret=True)
    for a, b in zip(one, block):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def _lowered_for_cuda(fn, *args) -> str:
    with platforms.tracing_for(("cuda",)):  # the CUDA kernels (msvision.ops.platforms)
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_forward_and_backward_lower_for_cuda_on_cpu():
    """The Triton kernels lower to XLA's Triton custom call without a GPU.

    Pallas's Triton lowering produces the Triton IR itself (jaxlib's bundled MLIR
    dialect) and emits a ``__gpu$xla.gpu.triton`` custom call whose backend config
    carries the serialized kernel and its name; only compiling it needs a GPU.
    """
    shapes = ((4, 6), (2, 3))
    value, locations, weights = (jnp.asarray(x) for x in make_inputs(0, 2, 5, 2, 4, shapes, 2))
    forward = lambda v, l, w: multiscale_deformable_attention(v, shapes, l, w, impl="triton")
    loss = lambda v, l, w: jnp.sum(forward(v, l, w))

    forward_text = _lowered_for_cuda(forward, value, locations, weights)
    assert re.search(r"custom_call @__gpu\$xla\.gpu\.triton", forward_text)
    assert 'name = "msda_forward"' in forward_text

    backward_text = _lowered_for_cuda(jax.grad(loss, argnums=(0, 1, 2)), value, locations, weights)
    calls = re.findall(r"custom_call @(__gpu\$xla\.gpu\.triton)", backward_text)
    assert len(calls) == 2  # the forward kernel and the backward kernel
    assert 'name = "msda_forward"' in backward_text and 'name = "msda_backward"' in backward_text

    bf16 = [x.astype(jnp.bfloat16) for x in (value, locations, weights)]
    assert 'name = "msda_backward"' in _lowered_for_cuda(jax.grad(loss, argnums=(0, 1, 2)), *bf16)
