"""Kernel self-check (:mod:`msvision.ops.kernel_selfcheck`): the MSDA ``impl="auto"`` path on a
simulated GPU host.

The GPU is simulated on the CPU by patching the self-check's backend probe; the
"kernel" under test is the interpret-mode Triton kernel (pass case) or a
deliberately wrong or raising one (fail cases). What runs after the check is
observed in the CUDA lowering: Triton custom calls when the kernel is selected,
none after a fallback.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msvision.ops import kernel_selfcheck, platforms
from msvision.ops.msda import multiscale_deformable_attention
from msvision.ops.msda.auto import MSDA_TRITON, outputs_and_gradients
from msvision.ops.msda.triton_kernel import multiscale_deformable_attention_triton
from msvision.ops.msda.xla import multiscale_deformable_attention_xla

SHAPES = ((4, 6), (2, 3))
TRITON_CALL = "xla.gpu.triton"


def _inputs(queries=5):
    rng = np.random.default_rng(1)
    value = rng.standard_normal((1, 30, 2, 4)).astype(np.float32)
    locations = rng.uniform(0, 1, (1, queries, 2, 2, 2, 2)).astype(np.float32)
    weights = rng.random((1, queries, 2, 2, 2)).astype(np.float32)
    return value, locations, weights


def _auto(value, locations, weights):
    return multiscale_deformable_attention(value, SHAPES, locations, weights, impl="auto")


def _auto_grad(value, locations, weights):
    return jax.grad(lambda *a: jnp.sum(_auto(*a) ** 2), argnums=(0, 1, 2))(value, locations, weights)


def _lowered_text(fn, platform, *args):
    # A fresh function each time: jit caches traces per function, and the kernel
    # choice is made while tracing.
    with platforms.tracing_for((platform,)):  # that platform's kernels (msvision.ops.platforms)
        return jax.jit(lambda *a: fn(*a)).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.fixture
def fresh(monkeypatch):
    """Empty verdict cache, default mode, and a way to swap the registered MSDA kernel."""
    kernel_selfcheck.reset_verdicts()
    kernel_selfcheck.set_mode(None)
    monkeypatch.delenv(kernel_selfcheck.ENV_VAR, raising=False)
    calls = []

    def use_kernel(op):
        run = outputs_and_gradients(op)

        def counted(*args):
            calls.append(1)
            return run(*args)

        spec = kernel_selfcheck._REGISTRY[MSDA_TRITON]
        monkeypatch.setitem(kernel_selfcheck._REGISTRY, MSDA_TRITON, dataclasses.replace(spec, kernel=counted))

    yield use_kernel, calls
    kernel_selfcheck.reset_verdicts()
    kernel_selfcheck.set_mode(None)


def _simulate_gpu(monkeypatch):
    monkeypatch.setattr(kernel_selfcheck, "_default_backend", lambda: "gpu")


def test_passing_kernel_is_checked_once_and_selected(fresh, monkeypatch):
    use_kernel, calls = fresh
    use_kernel(functools.partial(multiscale_deformable_attention_triton, interpret=True))
    _simulate_gpu(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", kernel_selfcheck.KernelFallbackWarning)
        text = _lowered_text(_auto_grad, "cuda", *_inputs())  # the check runs while tracing
        assert text.count(TRITON_CALL) == 2  # forward and backward kernels
        _lowered_text(_auto, "cuda", *_inputs(queries=7))  # a second trace: cached verdict
    assert len(calls) == 1
    verdict = kernel_selfcheck.verdicts()[(MSDA_TRITON, "gpu")]
    assert verdict.ok and verdict.reason == ""
    # Executed on this CPU, the platform-dependent op takes its XLA branch.
    np.testing.assert_allclose(jax.jit(_auto)(*_inputs()),
                               multiscale_deformable_attention_xla(_inputs()[0], SHAPES, *_inputs()[1:]),
                               rtol=1e-6, atol=1e-6)


def _wrong_kernel(value, spatial_shapes, locations, weights):
    """Right shapes, wrong numbers (one sampling point shifted by a pixel)."""
    return multiscale_deformable_attention_xla(value, spatial_shapes, locations + 0.02, weights)


def _raising_kernel(*args):
    raise RuntimeError("simulated Triton compilation failure")


@pytest.mark.parametrize("kernel, reason", [(_wrong_kernel, "differs from the reference"),
                                            (_raising_kernel, "simulated Triton compilation failure")])
def test_failing_kernel_falls_back_to_xla_with_a_warning(fresh, monkeypatch, kernel, reason):
    use_kernel, calls = fresh
    use_kernel(kernel)
    _simulate_gpu(monkeypatch)
    with pytest.warns(kernel_selfcheck.KernelFallbackWarning, match=reason):
        grad_text = _lowered_text(_auto_grad, "cuda", *_inputs())
    assert TRITON_CALL not in grad_text  # XLA in the CUDA module after the failure
    with warnings.catch_warnings():
        warnings.simplefilter("error", kernel_selfcheck.KernelFallbackWarning)  # warned once only
        assert TRITON_CALL not in _lowered_text(_auto, "cuda", *_inputs(queries=7))
        actual = jax.jit(_auto_grad)(*_inputs())
    assert len(calls) == 1
    verdict = kernel_selfcheck.verdicts()[(MSDA_TRITON, "gpu")]
    assert not verdict.ok and reason in verdict.reason
    value, locations, weights = _inputs()
    expected = jax.grad(lambda *a: jnp.sum(multiscale_deformable_attention_xla(a[0], SHAPES, *a[1:]) ** 2),
                        argnums=(0, 1, 2))(value, locations, weights)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6)


def test_lowering_for_cuda_on_a_cpu_host_selects_the_kernel_without_a_check(fresh):
    use_kernel, calls = fresh
    use_kernel(_raising_kernel)  # would fail if it ran
    assert jax.default_backend() == "cpu"
    assert _lowered_text(_auto_grad, "cuda", *_inputs()).count(TRITON_CALL) == 2
    assert TRITON_CALL not in _lowered_text(_auto_grad, "cpu", *_inputs())
    assert TRITON_CALL not in _lowered_text(_auto_grad, "tpu", *_inputs())
    assert calls == [] and kernel_selfcheck.verdicts() == {}


def test_modes_skip_and_off(fresh, monkeypatch):
    use_kernel, calls = fresh
    use_kernel(_raising_kernel)
    _simulate_gpu(monkeypatch)
    monkeypatch.setenv(kernel_selfcheck.ENV_VAR, "skip")
    assert TRITON_CALL in _lowered_text(_auto, "cuda", *_inputs())  # trusted without a check
    kernel_selfcheck.set_mode("off")  # the function overrides the variable
    assert TRITON_CALL not in _lowered_text(_auto, "cuda", *_inputs())
    assert calls == []
    with pytest.raises(ValueError, match="must be one of"):
        kernel_selfcheck.set_mode("sometimes")


def test_generic_registry_with_nan_output(fresh, monkeypatch):
    """Any registered kernel: a NaN in an output is a disagreement; the verdict is per backend."""
    kernel_selfcheck.register_kernel(
        "test_square", kernel=lambda x: (x * x, jnp.where(x > 0.5, jnp.nan, 2 * x)),
        reference=lambda x: (x * x, 2 * x), make_inputs=lambda: (np.linspace(0, 1, 8, dtype=np.float32),))
    try:
        _simulate_gpu(monkeypatch)
        with pytest.warns(kernel_selfcheck.KernelFallbackWarning, match="output 1 differs"):
            assert not kernel_selfcheck.kernel_enabled("test_square")
        with pytest.warns(kernel_selfcheck.KernelFallbackWarning, match="on cpu"):
            assert kernel_selfcheck.check_kernel("test_square", "cpu").ok is False
        assert set(kernel_selfcheck.verdicts()) == {("test_square", "gpu"), ("test_square", "cpu")}
    finally:
        kernel_selfcheck._REGISTRY.pop("test_square")
