"""Pallas Triton SFM kernels: interpret mode vs the XLA op (values, gradients), CUDA lowering."""

from __future__ import annotations

import re

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from msvision.ops import platforms
from msvision.ops.sps import resolve_impl, select_and_split, sfm, sps_from_dense


def partial_sps(seed, rois, size, channels, ks):
    rng = np.random.default_rng(seed)
    dense = jnp.asarray(rng.standard_normal((rois, size, size, channels)).astype(np.float32))
    sps = sps_from_dense(dense, jnp.asarray([True] * (rois - 1) + [False]))
    for k in ks:
        sps, _ = select_and_split(sps, jnp.asarray(rng.standard_normal(sps.num_active), jnp.float32), k)
        sps = sps.replace(act=sps.act + jnp.asarray(rng.standard_normal(sps.act.shape).astype(np.float32)))
    return sps, rng


def weights_for(rng, channels, out_channels):
    weights = jnp.asarray(0.3 * rng.standard_normal((3, 9 * channels, out_channels)), jnp.float32)
    biases = jnp.asarray(0.1 * rng.standard_normal((3, out_channels)), jnp.float32)
    return weights, biases


# (rois, base size, channels in, channels out, ks): channel counts that are not powers of
# two (or below 16) exercise the padding; 37 actives the padding of the last block.
CASES = [(2, 3, 4, 5, (5,)), (3, 2, 16, 16, (6, 10))]


@pytest.mark.parametrize("case", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_interpret_forward_and_gradients_match_xla(case):
    rois, size, channels, out_channels, ks = CASES[case]
    sps, rng = partial_sps(case, rois, size, channels, ks)
    assert sps.num_passive > 0
    table = sps.feature_table()
    weights, biases = weights_for(rng, channels, out_channels)
    cotangent = jnp.asarray(rng.standard_normal((sps.num_active, out_channels)), jnp.float32)
    args = (sps.id_map, sps.act_xy, sps.act_roi)

    def value_and_grads(impl):  # one compile for the forward and the backward
        def run(t, w, b):
            out, vjp = jax.vjp(lambda t, w, b: sfm(t, *args, w, b, impl=impl), t, w, b)
            return out, vjp(cotangent)
        return jax.jit(run)(table, weights, biases)

    kernel_out, kernel_grads = value_and_grads("triton_interpret")
    xla_out, xla_grads = value_and_grads("xla")
    np.testing.assert_allclose(kernel_out, xla_out, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(("table", "weights", "biases"), kernel_grads, xla_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))), err_msg=name)
    assert float(jnp.abs(kernel_grads[0][sps.num_active:sps.pad_id]).sum()) > 0  # passives got gradients


def test_interpret_bfloat16_output_accumulates_in_float32():
    sps, rng = partial_sps(5, 2, 2, 16, (4,))
    weights, biases = weights_for(rng, 16, 16)
    table = sps.feature_table().astype(jnp.bfloat16)
    args = (sps.id_map, sps.act_xy, sps.act_roi)
    actual = sfm(table, *args, weights.astype(jnp.bfloat16), biases.astype(jnp.bfloat16), impl="triton_interpret")
    assert actual.dtype == jnp.bfloat16
    expected = sfm(table.astype(jnp.float32), *args, weights.astype(jnp.bfloat16).astype(jnp.float32),
                   biases.astype(jnp.bfloat16).astype(jnp.float32), impl="xla")
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=2.0 ** -7, atol=2.0 ** -7)


def test_auto_picks_triton_only_on_gpu():
    assert resolve_impl("auto") == ("triton" if jax.default_backend() == "gpu" else "xla")
    with pytest.raises(ValueError):
        resolve_impl("cuda")


def _lowered_for_cuda(fn, *args) -> str:
    with platforms.tracing_for(("cuda",)):  # the CUDA kernels (msvision.ops.platforms)
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def test_forward_and_backward_lower_for_cuda_on_cpu():
    sps, rng = partial_sps(2, 2, 3, 32, (5,))
    table = sps.feature_table()
    weights, biases = weights_for(rng, 32, 32)
    args = (sps.id_map, sps.act_xy, sps.act_roi)
    forward = lambda t, w, b: sfm(t, *args, w, b, impl="triton")
    forward_text = _lowered_for_cuda(forward, table, weights, biases)
    assert re.search(r"custom_call @__gpu\$xla\.gpu\.triton", forward_text)
    assert 'name = "sfm_forward"' in forward_text

    grad = jax.grad(lambda t, w, b: jnp.sum(forward(t, w, b)), argnums=(0, 1, 2))
    backward_text = _lowered_for_cuda(grad, table, weights, biases)
    for name in ("sfm_forward", "sfm_backward_gates", "sfm_backward_actives", "sfm_backward_passives"):
        assert f'name = "{name}"' in backward_text, name
    bf16 = [x.astype(jnp.bfloat16) for x in (table, weights, biases)]
    assert 'name = "sfm_backward_passives"' in _lowered_for_cuda(grad, *bf16)


# --- impl="auto": platform-dependent dispatch and the kernel self-check ---------


def _auto_case():
    sps, rng = partial_sps(3, 2, 3, 8, (5,))
    weights, biases = weights_for(rng, 8, 8)
    return sps.feature_table(), (sps.id_map, sps.act_xy, sps.act_roi), weights, biases, rng


def test_auto_on_cpu_equals_xla_values_and_gradients():
    """The platform-dependent custom VJP (XLA branch here) against the plain XLA op."""
    table, args, weights, biases, rng = _auto_case()
    cot = jnp.asarray(rng.standard_normal((args[1].shape[0], 8)), jnp.float32)

    def run(impl):
        out, vjp = jax.vjp(lambda t, w, b: sfm(t, *args, w, b, impl=impl), table, weights, biases)
        return out, vjp(cot)

    expected = jax.jit(lambda: run("xla"))()
    actual = jax.jit(lambda: run("auto"))()
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_auto_lowers_to_triton_for_cuda_and_to_xla_for_cpu():
    table, args, weights, biases, _ = _auto_case()
    grad = jax.grad(lambda t, w, b: jnp.sum(sfm(t, *args, w, b, impl="auto") ** 2), argnums=(0, 1, 2))
    cuda = _lowered_for_cuda(grad, table, weights, biases)
    assert 'name = "sfm_forward"' in cuda and 'name = "sfm_backward_passives"' in cuda
    cpu = jax.jit(grad).trace(table, weights, biases).lower(lowering_platforms=("cpu",)).as_text()
    assert "triton" not in cpu


@pytest.fixture
def simulated_gpu(monkeypatch):
    from msvision.ops import kernel_selfcheck

    kernel_selfcheck.reset_verdicts()
    kernel_selfcheck.set_mode(None)
    monkeypatch.delenv(kernel_selfcheck.ENV_VAR, raising=False)
    monkeypatch.setattr(kernel_selfcheck, "_default_backend", lambda: "gpu")
    yield kernel_selfcheck
    kernel_selfcheck.reset_verdicts()


@pytest.mark.parametrize("passes", [True, False])
def test_auto_is_self_checked_on_first_gpu_use(simulated_gpu, monkeypatch, passes):
    """On a (simulated) GPU host the registered check runs once; a kernel that agrees with XLA
    is lowered, one that disagrees falls back to XLA with a warning."""
    import dataclasses
    import functools

    from msvision.ops.sps import auto
    from msvision.ops.sps.triton_kernel import sfm_triton

    check = simulated_gpu
    kernel = functools.partial(sfm_triton, dilations=(1, 3, 5), interpret=True)
    if not passes:
        kernel = lambda *a, **k: 2.0 * functools.partial(sfm_triton, dilations=(1, 3, 5), interpret=True)(*a)  # noqa
    spec = check._REGISTRY[auto.SFM_TRITON]
    monkeypatch.setitem(check._REGISTRY, auto.SFM_TRITON,
                        dataclasses.replace(spec, kernel=auto.outputs_and_gradients(kernel)))
    table, args, weights, biases, _ = _auto_case()
    forward = lambda t, w, b: sfm(t, *args, w, b, impl="auto")  # noqa: E731
    if passes:
        text = _lowered_for_cuda(forward, table, weights, biases)
    else:
        with pytest.warns(check.KernelFallbackWarning):
            text = _lowered_for_cuda(forward, table, weights, biases)
    assert ('name = "sfm_forward"' in text) == passes
    verdict = check.verdicts()[(auto.SFM_TRITON, "gpu")]
    assert verdict.ok == passes
