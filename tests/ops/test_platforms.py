"""Platform-dependent ops trace only the branches of the platforms a trace is for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msvision.ops import platforms


def _op(traced: list):
    def cuda_branch(x):
        traced.append("cuda")
        return x + 100.0

    def cpu_branch(x):
        traced.append("cpu")
        return x + 10.0

    def default(x):
        traced.append("default")
        return x + 1.0

    return lambda x: platforms.platform_dependent(x, cuda=cuda_branch, cpu=cpu_branch, default=default)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the default platform is the CPU here")
def test_default_traces_the_local_platform_and_the_fallback_only():
    traced = []
    op = _op(traced)
    x = jnp.zeros(3)
    np.testing.assert_allclose(jax.jit(op)(x), 10.0)  # the CPU branch runs
    assert sorted(traced) == ["cpu", "default"]  # the CUDA branch was never traced
    traced.clear()
    # lowered for CUDA without saying so: the portable default branch, not the CPU's
    text = jax.jit(_op(traced)).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert "cuda" not in traced and "1.000000e+00" in text and "1.000000e+02" not in text


def test_tracing_for_keeps_the_branches_of_the_named_platforms():
    traced = []
    x = jnp.zeros(3)
    with platforms.tracing_for(("cuda",)):
        text = jax.jit(_op(traced)).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert sorted(traced) == ["cuda", "default"]
    assert "1.000000e+02" in text
    traced.clear()
    with platforms.tracing_for(("tpu",)):  # no branch for it: the default, called directly
        jax.jit(_op(traced)).trace(x)
    assert traced == ["default"]
    assert platforms.traced_platforms() == (platforms.default_platform(),)  # the context is gone


def test_unknown_platforms_are_refused():
    with pytest.raises(ValueError, match="unknown platform"):
        with platforms.tracing_for(("cuda12",)):
            pass
    with pytest.raises(ValueError, match="unknown platforms"):
        platforms.platform_dependent(jnp.zeros(1), gpu=lambda x: x, default=lambda x: x)
