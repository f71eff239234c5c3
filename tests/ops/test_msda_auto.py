"""MSDA ``impl="auto"`` on this CPU host: the native kernel in code lowered for the CPU (when it is
available), never in code lowered for CUDA/TPU; XLA when it is turned off, fails to build, for
float64 and inside ``without_native_cpu_kernel``. Runs with and without a C++ compiler
(``MSVISION_MSDA_NATIVE=off`` simulates the latter)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msvision.ops import platforms
from msvision.ops.msda import auto, cpu_ffi, multiscale_deformable_attention, multiscale_deformable_attention_xla

SHAPES = ((6, 9), (3, 5))
NATIVE = "custom_call @msvision_msda_cpu_"  # both targets: ..._forward, ..._backward


def _inputs(dtype=np.float32):
    rng = np.random.default_rng(0)
    value = rng.standard_normal((2, 69, 2, 8)).astype(dtype)
    locations = rng.uniform(-0.2, 1.2, (2, 7, 2, 2, 3, 2)).astype(dtype)
    weights = rng.random((2, 7, 2, 2, 3)).astype(dtype)
    return value, locations, weights


def _auto_grad(value, locations, weights):
    loss = lambda v, l, w: jnp.sum(multiscale_deformable_attention(v, SHAPES, l, w, impl="auto") ** 2)  # noqa: E731
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(value, locations, weights)


def _xla_grad(value, locations, weights):
    loss = lambda v, l, w: jnp.sum(multiscale_deformable_attention_xla(v, SHAPES, l, w) ** 2)  # noqa: E731
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(value, locations, weights)


def _lowered_text(platform, *args):
    # A fresh function each time: jit caches traces per function, and the choice is made while tracing.
    with platforms.tracing_for((platform,)):  # that platform's kernels (msvision.ops.platforms)
        return jax.jit(lambda *a: _auto_grad(*a)).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def _assert_matches_xla(*args):
    actual = jax.tree.leaves(jax.jit(lambda *a: _auto_grad(*a))(*args))
    for a, e in zip(actual, jax.tree.leaves(jax.jit(_xla_grad)(*args))):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(e))))


def test_native_kernel_only_in_code_lowered_for_the_cpu():
    expected = 2 if cpu_ffi.available() else 0  # forward and backward
    assert _lowered_text("cpu", *_inputs()).count(NATIVE) == expected
    for platform in ("cuda", "rocm", "tpu"):
        assert NATIVE not in _lowered_text(platform, *_inputs()), platform
    _assert_matches_xla(*_inputs())


def test_thread_count_is_decided_at_run_time():
    if not cpu_ffi.available():
        pytest.skip(f"native kernel unavailable: {cpu_ffi.unavailable_reason()}")
    text = _lowered_text("cpu", *_inputs())
    assert text.count("num_threads = 0 : i64") == 2


def test_turned_off_by_the_environment_falls_back_to_xla(monkeypatch):
    monkeypatch.setenv(cpu_ffi.DISABLE_ENV, "off")
    assert not cpu_ffi.available() and cpu_ffi.DISABLE_ENV in cpu_ffi.unavailable_reason()
    with warnings.catch_warnings():
        warnings.simplefilter("error", auto.NativeKernelFallbackWarning)  # turned off on purpose: no warning
        assert NATIVE not in _lowered_text("cpu", *_inputs())
        _assert_matches_xla(*_inputs())
    with pytest.raises(RuntimeError, match=cpu_ffi.DISABLE_ENV):  # an explicit impl="cpu" says why
        multiscale_deformable_attention(*_inputs()[:1], SHAPES, *_inputs()[1:], impl="cpu")


def test_failed_build_warns_once_and_falls_back_to_xla(monkeypatch):
    monkeypatch.delenv(cpu_ffi.DISABLE_ENV, raising=False)
    monkeypatch.setattr(cpu_ffi, "_load", lambda: "RuntimeError: no C++ compiler found (simulated)")
    auto._warn_native_unavailable.cache_clear()
    try:
        with pytest.warns(auto.NativeKernelFallbackWarning, match="simulated"):
            assert NATIVE not in _lowered_text("cpu", *_inputs())
        with warnings.catch_warnings():
            warnings.simplefilter("error", auto.NativeKernelFallbackWarning)  # warned once only
            assert NATIVE not in _lowered_text("cpu", *_inputs())
            _assert_matches_xla(*_inputs())
    finally:
        auto._warn_native_unavailable.cache_clear()


def test_a_raising_availability_check_never_escapes_auto(monkeypatch):
    def boom():
        raise OSError("simulated")

    monkeypatch.delenv(cpu_ffi.DISABLE_ENV, raising=False)
    monkeypatch.setattr(cpu_ffi, "available", boom)
    auto._warn_native_unavailable.cache_clear()
    try:
        with pytest.warns(auto.NativeKernelFallbackWarning, match="OSError: simulated"):
            assert NATIVE not in _lowered_text("cpu", *_inputs())
    finally:
        auto._warn_native_unavailable.cache_clear()


def test_float64_and_export_context_take_xla():
    with jax.enable_x64(True):
        assert NATIVE not in _lowered_text("cpu", *_inputs(np.float64))
    with auto.without_native_cpu_kernel():
        assert NATIVE not in _lowered_text("cpu", *_inputs())
    assert _lowered_text("cpu", *_inputs()).count(NATIVE) == (2 if cpu_ffi.available() else 0)  # context left
