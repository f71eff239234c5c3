"""oneDNN convolution (FFI): forward and both gradients against ``lax.conv_general_dilated``.

Oracle: ``lax.conv_general_dilated`` and its ``jax.vjp`` in float64. Every output
element is a sum of ``n`` products; a float32 result computed in any order is
within ``n * 2**-24 * sum|a||b|`` of the exact sum (the classic bound for a
recursive or blocked sum), ``sum|a||b|`` being the same convolution of the
absolute values. bfloat16 (inputs exact in bf16, float32 accumulation, one
rounding of the result) is checked against ``2**-8 * sum|a||b|``.

Skipped when the kernel is unavailable (no oneDNN wheels, no compiler); the
``test`` extra installs the wheels.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from msvision.ops import conv, onednn, platforms
from msvision.ops.onednn import ffi

pytestmark = pytest.mark.skipif(not ffi.available(),
                                reason=f"oneDNN convolution kernel unavailable: {ffi.unavailable_reason()}")

CASES = [  # (H, W, in, out, k, stride, padding, dilation, groups), batch 2
    (9, 11, 5, 7, 3, 1, ((1, 1), (1, 1)), 1, 1),  # 3x3 stride 1, odd sizes, channels not multiples of 16
    (8, 7, 6, 10, 1, 1, ((0, 0), (0, 0)), 1, 1),  # 1x1
    (9, 11, 5, 6, 3, 2, ((0, 2), (1, 0)), 1, 1),  # 3x3 stride 2, asymmetric padding, last column unused
    (12, 11, 4, 6, 3, 1, ((2, 2), (2, 2)), 2, 1),  # dilation 2
    (15, 13, 3, 9, 7, 2, ((3, 3), (3, 3)), 1, 1),  # 7x7 stride 2 (ResNet stem)
    (10, 9, 6, 6, 3, 1, ((1, 1), (1, 1)), 1, 6),  # depthwise
    (9, 9, 8, 12, 3, 2, ((1, 1), (1, 1)), 1, 2),  # two groups, stride 2
]
CASE_IDS = ["3x3", "1x1", "stride2_asym", "dilation2", "7x7_stride2", "depthwise", "groups2"]


def lax_conv(x, kernel, stride, padding, dilation, groups):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def make_inputs(case, seed=0):
    h, w, cin, cout, k, stride, padding, dilation, groups = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, w, cin)).astype(np.float32)
    kernel = rng.standard_normal((k, k, cin // groups, cout)).astype(np.float32)
    out_shape = jax.eval_shape(lambda a, b: lax_conv(a, b, stride, padding, dilation, groups), x, kernel).shape
    output_grad = rng.standard_normal(out_shape).astype(np.float32)
    return x, kernel, output_grad


def forward_and_grads(op, x, kernel, output_grad):
    output, vjp = jax.vjp(op, x, kernel)
    return (output, *vjp(output_grad))


@functools.cache
def float64_reference(case, dtype):
    """(output, dL/dx, dL/dkernel) in float64 of the inputs rounded to ``dtype``, and
    the same of their absolute values (sum|a||b| of every element)."""
    _, _, _, _, _, stride, padding, dilation, groups = CASES[case]
    inputs = [np.asarray(jnp.asarray(a, dtype), np.float64) for a in make_inputs(case)]
    op = lambda a, b: lax_conv(a, b, stride, padding, dilation, groups)  # noqa: E731
    with jax.enable_x64(True):
        exact = [np.asarray(r) for r in jax.jit(functools.partial(forward_and_grads, op))(*inputs)]
        magnitude = [np.asarray(r) for r in jax.jit(functools.partial(forward_and_grads, op))(
            *(np.abs(a) for a in inputs))]
    return exact, magnitude


def terms(case):
    """Products summed into one element of the output, dL/dx and dL/dkernel (upper bounds)."""
    h, w, cin, cout, k, stride, padding, dilation, groups = CASES[case]
    out_h = (h + sum(padding[0]) - (k - 1) * dilation - 1) // stride + 1
    out_w = (w + sum(padding[1]) - (k - 1) * dilation - 1) // stride + 1
    return k * k * cin // groups, k * k * cout // groups, 2 * out_h * out_w


def assert_within(actual, exact, magnitude, tolerance, name):
    error = np.abs(np.asarray(actual, np.float64) - exact)
    bound = tolerance * magnitude
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert np.all(error <= bound), (f"{name}: error {error[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
                                    f"(max error {error.max():.3g})")


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_float32_matches_float64_lax_conv(case):
    _, _, _, _, _, stride, padding, dilation, groups = CASES[case]
    actual = forward_and_grads(lambda a, b: onednn.conv2d(a, b, stride, padding, dilation, groups),
                               *make_inputs(case))
    exact, magnitude = float64_reference(case, jnp.float32)
    for name, a, e, m, n in zip(("output", "input grad", "kernel grad"), actual, exact, magnitude, terms(case)):
        assert a.dtype == jnp.float32 and a.shape == e.shape, name
        assert_within(a, e, m, n * 2.0**-24, name)


@pytest.mark.parametrize("case", [0, 2, 3, 5], ids=[CASE_IDS[i] for i in (0, 2, 3, 5)])
def test_bfloat16_within_bfloat16_rounding(case):
    """bf16 in and out (float32 accumulation); the kernel gradient leaves oneDNN in
    float32 and is rounded once to the kernel's bf16."""
    _, _, _, _, _, stride, padding, dilation, groups = CASES[case]
    inputs = [jnp.asarray(a, jnp.bfloat16) for a in make_inputs(case)]
    actual = jax.jit(lambda *a: forward_and_grads(
        lambda x, k: onednn.conv2d(x, k, stride, padding, dilation, groups), *a))(*inputs)
    exact, magnitude = float64_reference(case, jnp.bfloat16)
    for name, a, e, m in zip(("output", "input grad", "kernel grad"), actual, exact, magnitude):
        assert a.dtype == jnp.bfloat16, name
        assert_within(a, e, m, 2.0**-8, name)
    kernel_grad = ffi.backward_weights(inputs[0], inputs[2], inputs[1].shape, stride, padding, dilation, groups)
    assert kernel_grad.dtype == jnp.float32  # the custom call's own result
    assert_within(kernel_grad, exact[2], magnitude[2], terms(case)[2] * 2.0**-24 + 2.0**-24, "f32 kernel grad")


def test_implementation_names():
    """oneDNN's implementation per kind; bf16 without native support runs as float32 ("+f32")."""
    shape, kernel_shape, padding = (2, 9, 11, 5), (3, 3, 5, 7), ((1, 1), (1, 1))
    for kind in ffi.KINDS:
        name = ffi.implementation(kind, shape, kernel_shape, jnp.float32, 1, padding)
        assert name and not name.endswith("+f32") and "ref" not in name, (kind, name)
        bf16 = ffi.implementation(kind, shape, kernel_shape, jnp.bfloat16, 1, padding)
        assert bf16.endswith("+f32") != ffi.native_bfloat16(), (kind, bf16)
    with pytest.raises(RuntimeError, match="rejects"):
        ffi.implementation("forward", shape, kernel_shape, jnp.float32, 1, ((-1, 0), (0, 0)))


def test_jit_grad_through_conv2d_switch(monkeypatch):
    """A tiny jitted loss through msvision.ops.conv.conv2d with MSVISION_CONV_IMPL=onednn:
    the three custom calls, and the XLA path's loss and gradients."""
    monkeypatch.delenv(conv.IMPL_ENV, raising=False)
    x, kernel, _ = make_inputs(0)
    padding = ((1, 1), (1, 1))

    def loss(x, kernel, bias):
        y = conv.conv2d(jnp.tanh(x), kernel, 1, padding) + bias
        return jnp.sum(jax.nn.relu(y) ** 2)

    step = jax.value_and_grad(loss, argnums=(0, 1, 2))
    bias = jnp.linspace(-1.0, 1.0, kernel.shape[-1])
    expected = jax.jit(step)(x, kernel, bias)
    monkeypatch.setenv(conv.IMPL_ENV, "onednn")
    # A new function: jax keeps the trace of `step`, made with the switch at "xla".
    onednn_step = jax.jit(lambda *args: step(*args))
    hlo = onednn_step.lower(x, kernel, bias).as_text()
    for target in (ffi.FORWARD_TARGET, ffi.BACKWARD_DATA_TARGET, ffi.BACKWARD_WEIGHTS_TARGET):
        assert hlo.count(target) == 1, target
    actual = onednn_step(x, kernel, bias)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-5 * float(np.abs(e).max()))


def test_default_is_xla_and_unchanged(monkeypatch):
    """Without MSVISION_CONV_IMPL, a float32 conv2d lowers exactly as impl="xla" (no custom call)."""
    monkeypatch.delenv(conv.IMPL_ENV, raising=False)
    x, kernel, _ = make_inputs(0)
    grad = lambda impl: jax.jit(jax.grad(  # noqa: E731
        lambda x, k: jnp.sum(conv.conv2d(x, k, 1, ((1, 1), (1, 1)), impl=impl) ** 2), argnums=(0, 1)))
    default, xla = grad(None).lower(x, kernel).as_text(), grad("xla").lower(x, kernel).as_text()
    assert "msvision_onednn" not in default and default == xla
    monkeypatch.setenv(conv.IMPL_ENV, "cudnn")
    with pytest.raises(ValueError, match="MSVISION_CONV_IMPL"):
        conv.conv2d(x, kernel)


def test_bfloat16_default_is_auto_and_export_takes_xla(monkeypatch):
    """Without MSVISION_CONV_IMPL a bfloat16 conv2d lowers as impl="auto": the custom calls
    where the CPU has native bf16 convolutions, XLA's convolution elsewhere; inside
    xla_only() (jax.export) it is XLA's whatever the variable says."""
    monkeypatch.delenv(conv.IMPL_ENV, raising=False)
    x, kernel, _ = make_inputs(0)
    x, kernel = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    assert conv.default_impl(jnp.bfloat16) == "auto" and conv.default_impl(jnp.float32) == "xla"
    grad = lambda impl: jax.jit(jax.grad(  # noqa: E731
        lambda x, k: jnp.sum(conv.conv2d(x, k, 1, ((1, 1), (1, 1)), impl=impl).astype(jnp.float32) ** 2),
        argnums=(0, 1)))
    default, auto = grad(None).lower(x, kernel).as_text(), grad("auto").lower(x, kernel).as_text()
    assert default == auto
    assert (ffi.FORWARD_TARGET in default) == ffi.native_bfloat16()
    monkeypatch.setenv(conv.IMPL_ENV, "onednn")
    with conv.xla_only():
        inside = grad(None).lower(x, kernel).as_text()
    assert "msvision_onednn" not in inside and inside == grad("xla").lower(x, kernel).as_text()
    assert ffi.FORWARD_TARGET in grad(None).lower(x, kernel).as_text()  # the context is over


def test_other_platforms_and_dtypes_take_xla():
    """Lowered for CUDA, or in float16, the op is XLA's convolution, not the custom call,
    also after the same convolution was traced for the CPU."""
    x, kernel, _ = make_inputs(0)
    op = lambda x, k: onednn.conv2d(x, k, 1, ((1, 1), (1, 1)))  # noqa: E731
    loss = lambda x, k: jnp.sum(op(x, k) ** 2)  # noqa: E731
    cpu = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).as_text()
    assert ffi.FORWARD_TARGET in cpu
    with platforms.tracing_for(["cuda"]):
        cuda = jax.jit(jax.grad(lambda x, k: loss(x, k), argnums=(0, 1))).trace(x, kernel).lower(
            lowering_platforms=("cuda",)).as_text()
    assert "msvision_onednn" not in cuda and cuda.count("stablehlo.convolution") == 3
    half = jax.jit(op).lower(x.astype(jnp.float16), kernel.astype(jnp.float16)).as_text()
    assert "msvision_onednn" not in half and "stablehlo.convolution" in half


def test_vmap_runs_the_kernel_per_element():
    x, kernel, _ = make_inputs(1)
    op = lambda x: onednn.conv2d(x[None], kernel)[0]  # noqa: E731
    np.testing.assert_array_equal(jax.vmap(op)(x), onednn.conv2d(x, kernel))


THREADS_SCRIPT = """
import sys
import numpy as np
import jax
from msvision.ops import onednn
rng = np.random.default_rng(0)
results = {}
for channels in (8, 32):
    x = rng.standard_normal((2, 16, 16, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, channels, channels)).astype(np.float32)
    y, vjp = jax.vjp(lambda a, b: onednn.conv2d(a, b, 1, ((1, 1), (1, 1))), x, kernel)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw = vjp(g)
    results.update({f"y{channels}": y, f"dx{channels}": dx, f"dw{channels}": dw, f"x{channels}": x,
                    f"g{channels}": g})
np.savez(sys.argv[1], **results)
"""


def test_thread_counts(tmp_path):
    """float32 with OMP_NUM_THREADS=1 vs 2 (oneDNN promises the same bits only for the
    same thread count). Observed on an AVX2 CPU: forward and input gradient the same
    bits (threads split the output, each sum stays whole); the kernel gradient
    differs in the last bits at 8 channels, where the threads split the batch and
    add their partial sums, and is the same bits at 32 channels."""
    outputs = {}
    for threads in (1, 2):
        path = tmp_path / f"threads{threads}.npz"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), JAX_PLATFORMS="cpu")
        result = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(path)], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[threads] = dict(np.load(path))
    one, two = outputs[1], outputs[2]
    for channels in (8, 32):
        for name in (f"y{channels}", f"dx{channels}"):
            np.testing.assert_array_equal(two[name], one[name], err_msg=f"{name}: not the same bits for 1 and 2 threads")
        # Each within n * 2**-24 * sum|x||g| of the exact sum (n = 2 * 16 * 16 terms), so of each other within twice that.
        x, g = np.abs(one[f"x{channels}"]), np.abs(one[f"g{channels}"])
        _, vjp = jax.vjp(lambda k: lax_conv(x, k, 1, ((1, 1), (1, 1)), 1, 1), one[f"dw{channels}"])
        (magnitude,) = vjp(g)
        error = np.abs(two[f"dw{channels}"].astype(np.float64) - one[f"dw{channels}"])
        assert np.all(error <= 2 * 2 * 16 * 16 * 2.0**-24 * np.asarray(magnitude)), f"dw{channels}"


def test_turned_off_falls_back_to_xla(monkeypatch):
    x, kernel, _ = make_inputs(0)
    monkeypatch.setenv(ffi.DISABLE_ENV, "off")
    assert not ffi.available() and "MSVISION_ONEDNN" in ffi.unavailable_reason()
    assert not onednn.auto_enabled(x, kernel, 1, ((1, 1), (1, 1)), 1)
    hlo = jax.jit(lambda x, k: conv.conv2d(x, k, 1, ((1, 1), (1, 1)), impl="auto")).lower(x, kernel).as_text()
    assert "msvision_onednn" not in hlo
    with pytest.raises(RuntimeError, match="unavailable"):
        conv.conv2d(x, kernel, 1, ((1, 1), (1, 1)), impl="onednn")
    monkeypatch.delenv(ffi.DISABLE_ENV)
    assert onednn.auto_enabled(x, kernel, 1, ((1, 1), (1, 1)), 1)  # float32 on the CPU
    hlo = jax.jit(lambda x, k: conv.conv2d(x, k, 1, ((1, 1), (1, 1)), impl="auto")).lower(x, kernel).as_text()
    assert ffi.FORWARD_TARGET in hlo


def test_missing_wheels_are_reported(monkeypatch):
    monkeypatch.setattr(ffi, "RUNTIME_WHEEL", "onednn-cpu-gomp-not-installed")
    with pytest.raises(RuntimeError, match="onednn-cpu-gomp==2023.2.0"):
        ffi.locate_onednn()


def test_build_is_cached():
    library = ffi.build()
    assert os.path.dirname(library) == ffi.cache_dir() and library.endswith(".so")
    modified = os.path.getmtime(library)
    assert ffi.build() == library and os.path.getmtime(library) == modified
