"""Native CPU MSDA kernel (FFI): forward and gradients against the XLA implementation."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from msvision.ops.msda import multiscale_deformable_attention, multiscale_deformable_attention_xla
from msvision.ops.msda import cpu_ffi

pytestmark = pytest.mark.skipif(not cpu_ffi.available(),
                                reason=f"native MSDA CPU kernel unavailable: {cpu_ffi.unavailable_reason()}")


def make_inputs(seed, batch, queries, heads, channels, spatial_shapes, points, dtype=np.float32):
    """Random value / locations / weights / output gradient; locations spill outside [0, 1]."""
    rng = np.random.default_rng(seed)
    levels = len(spatial_shapes)
    total = sum(h * w for h, w in spatial_shapes)
    value = rng.standard_normal((batch, total, heads, channels)).astype(dtype)
    locations = rng.uniform(-0.2, 1.2, (batch, queries, heads, levels, points, 2)).astype(dtype)
    # A few points far outside (every corner outside, clipped coordinates).
    locations[:, 0, 0, :, 0] = (-3.0, 7.5)
    weights = rng.random((batch, queries, heads, levels, points)).astype(dtype)
    output_grad = rng.standard_normal((batch, queries, heads * channels)).astype(dtype)
    return value, locations, weights, output_grad


CASES = [
    # (batch, queries, heads, channels, spatial_shapes, points)
    (2, 9, 2, 1, ((6, 9), (3, 5), (2, 2)), 2),
    (2, 7, 3, 5, ((7, 4), (4, 2), (1, 1)), 3),
    (2, 13, 8, 32, ((8, 8), (4, 4), (2, 2), (1, 1)), 4),
    (2, 5, 4, 17, ((5, 3),), 1),
]


def forward_and_grads(op, value, shapes, locations, weights, output_grad):
    output, vjp = jax.vjp(lambda v, l, w: op(v, shapes, l, w), value, locations, weights)
    return (output, *vjp(output_grad))


def assert_close(actual, expected, rtol=1e-5):
    """float32 rounding: relative to the largest magnitude of the expected array."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(float(np.max(np.abs(expected))), 1e-30))


@functools.cache
def xla_forward_and_grads(case):
    batch, queries, heads, channels, shapes, points = CASES[case]
    inputs = make_inputs(case, batch, queries, heads, channels, shapes, points)
    return jax.jit(lambda v, l, w, g: forward_and_grads(multiscale_deformable_attention_xla, v, shapes, l, w, g))(
        *inputs)


@pytest.mark.parametrize("num_threads", [0, 1, 2])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_and_gradients_match_xla(case, num_threads):
    batch, queries, heads, channels, shapes, points = CASES[case]
    value, locations, weights, output_grad = make_inputs(case, batch, queries, heads, channels, shapes, points)
    cpu_op = lambda v, s, l, w: cpu_ffi.multiscale_deformable_attention_cpu(v, s, l, w, num_threads=num_threads)
    actual = forward_and_grads(cpu_op, value, shapes, locations, weights, output_grad)
    expected = xla_forward_and_grads(case)
    for name, a, e in zip(("output", "value grad", "location grad", "weight grad"), actual, expected):
        assert a.dtype == jnp.float32, name
        assert_close(a, e)


def test_matches_float64_xla():
    """Against the XLA implementation in float64 (itself checked against finite
    differences and the reference in test_msda.py)."""
    shapes = ((6, 9), (3, 5), (2, 2))
    value, locations, weights, output_grad = make_inputs(7, 2, 11, 3, 6, shapes, 3)
    actual = forward_and_grads(lambda v, s, l, w: multiscale_deformable_attention(v, s, l, w, impl="cpu"),
                               value, shapes, locations, weights, output_grad)
    with jax.enable_x64(True):
        expected = jax.jit(lambda v, l, w, g: forward_and_grads(multiscale_deformable_attention_xla, v, shapes,
                                                                l, w, g))(
            *(x.astype(np.float64) for x in (value, locations, weights, output_grad)))
        expected = [np.asarray(e) for e in expected]
    for a, e in zip(actual, expected):
        assert_close(a, e, rtol=2e-5)


def test_thread_counts_agree_bitwise():
    """Every (batch, head) pair is owned by one thread: results do not depend on the split, nor on
    whether XLA's thread pool (0: decided at run time) or std::threads run it."""
    shapes = ((6, 9), (3, 5))
    value, locations, weights, output_grad = make_inputs(3, 2, 9, 3, 8, shapes, 2)
    results = [forward_and_grads(
        lambda v, s, l, w: cpu_ffi.multiscale_deformable_attention_cpu(v, s, l, w, num_threads=n),
        value, shapes, locations, weights, output_grad) for n in (1, 0, 2, 5, 64)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_bfloat16_inputs_round_trip_through_float32():
    shapes = ((6, 9), (3, 5))
    value, locations, weights, _ = make_inputs(4, 2, 9, 2, 8, shapes, 2)
    args = [jnp.asarray(x, jnp.bfloat16) for x in (value, locations, weights)]
    output = multiscale_deformable_attention(args[0], shapes, *args[1:], impl="cpu")
    assert output.dtype == jnp.bfloat16
    expected = multiscale_deformable_attention_xla(args[0], shapes, *args[1:])
    np.testing.assert_allclose(np.asarray(output, np.float32), np.asarray(expected, np.float32), rtol=1e-2, atol=1e-2)
    grads = jax.grad(lambda *a: multiscale_deformable_attention(a[0], shapes, *a[1:], impl="cpu")
                     .astype(jnp.float32).sum(), argnums=(0, 1, 2))(*args)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3


def test_float64_falls_back_to_xla(monkeypatch):
    calls = []
    xla_op = cpu_ffi.xla_impl.multiscale_deformable_attention_xla
    monkeypatch.setattr(cpu_ffi.xla_impl, "multiscale_deformable_attention_xla",
                        lambda *args: calls.append(1) or xla_op(*args))
    shapes = ((5, 4), (3, 2))
    with jax.enable_x64(True):
        value, locations, weights, _ = make_inputs(5, 1, 4, 2, 3, shapes, 2, dtype=np.float64)
        output = jax.jit(lambda v, l, w: multiscale_deformable_attention(v, shapes, l, w, impl="cpu"))(
            value, locations, weights)
    assert output.dtype == jnp.float64 and calls == [1]


def test_build_is_cached():
    """The library is keyed by source, compiler, flags and jaxlib; a second build reuses it."""
    library = cpu_ffi.build()
    assert os.path.dirname(library) == cpu_ffi.cache_dir() and library.endswith(".so")
    modified = os.path.getmtime(library)
    assert cpu_ffi.build() == library
    assert os.path.getmtime(library) == modified


def test_vmap_runs_the_kernel_per_element():
    shapes = ((6, 9), (3, 5))
    value, locations, weights, _ = make_inputs(6, 2, 5, 2, 4, shapes, 2)
    op = lambda v, l, w: multiscale_deformable_attention(v[None], shapes, l[None], w[None], impl="cpu")[0]
    batched = jax.vmap(op)(value, locations, weights)
    # Batch elements are independent in the kernel: the same bits as one call on the batch.
    np.testing.assert_array_equal(batched, multiscale_deformable_attention(value, shapes, locations, weights,
                                                                           impl="cpu"))


SHARDED_SCRIPT = """
import numpy as np, jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from msvision.ops.msda import multiscale_deformable_attention, multiscale_deformable_attention_xla
shapes = ((6, 9), (3, 5))
rng = np.random.default_rng(0)
value = rng.standard_normal((4, 69, 2, 8)).astype(np.float32)
locations = rng.uniform(-0.2, 1.2, (4, 7, 2, 2, 3, 2)).astype(np.float32)
weights = rng.random((4, 7, 2, 2, 3)).astype(np.float32)
batch = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
def loss(op):
    return jax.jit(jax.value_and_grad(lambda v, l, w: (op(v, shapes, l, w) ** 2).sum(), argnums=(0, 1, 2)))
cpu = loss(lambda v, s, l, w: multiscale_deformable_attention(v, s, l, w, impl="cpu"))
args = [jax.device_put(x, batch) for x in (value, locations, weights)]
hlo = cpu.lower(*args).compile().as_text()
calls = [line for line in hlo.splitlines() if "custom_call_target=\\"msvision_msda_cpu" in line]
assert len(calls) == 2 and all("f32[2,7,2,8]" in c or "f32[2,69,2,8]" in c for c in calls), calls
for a, e in zip(jax.tree.leaves(cpu(*args)), jax.tree.leaves(loss(multiscale_deformable_attention_xla)(*args))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-5 * float(np.abs(e).max()))
print("ok")
"""


@pytest.mark.slow
def test_batch_sharded_on_two_devices_runs_per_shard():
    """On a mesh sharding the batch, the SPMD partitioner runs each kernel on its
    batch shard (targets registered as batch partitionable) instead of all-gathering."""
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
