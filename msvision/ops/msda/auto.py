"""MSDA ``impl="auto"``: Triton on CUDA/ROCm, the native kernel on the CPU, XLA elsewhere, per lowering platform.

What runs where (code lowered for ...):

- CUDA / ROCm: the Pallas Triton kernels (:mod:`.triton_kernel`), if they passed
  their first-use self-check on a GPU host (see below); else XLA.
- CPU: the native C++ kernel (:mod:`.cpu_ffi`, custom calls
  ``msvision_msda_cpu_forward`` / ``_backward``) when the CPU is the default
  backend of the tracing process, the inputs are not float64 and
  :func:`cpu_ffi.available` (the kernel built with the system C++ compiler, or
  found in its cache, and not turned off by ``MSVISION_MSDA_NATIVE=off``); else XLA.
  If the build fails, ``"auto"`` warns once (:class:`NativeKernelFallbackWarning`)
  and uses XLA; it never raises. Its thread count is decided at run time
  (``num_threads=0``), so a traced graph does not carry this machine's CPU count.
  :func:`without_native_cpu_kernel` keeps it out of a trace: :mod:`msvision.inference.exporter`
  does so, as ``jax.export`` refuses custom calls without a compatibility guarantee
  and an artefact must run where no compiler is.
- TPU and anything else: the XLA implementation (:mod:`.xla`).

The choice is made inside the traced function with ``lax.platform_dependent`` (as
:mod:`msvision.ops.conv` does), so it follows the platform the computation is lowered
for, not the backend of the machine that traces it: lowering a train step for CUDA
on a CPU-only host (``python -m msvision.analysis --lower-for=cuda``) emits the
Triton custom calls and no native CPU custom call, lowering it for the CPU emits
the native kernel's custom calls, for TPU the XLA gathers. Only the branch of the
lowering platform is lowered. Only the branches of the platforms the trace is for
are traced (:mod:`msvision.ops.platforms`: the default backend's, or those of
``platforms.tracing_for``); code lowered for another platform without
``tracing_for`` gets the XLA implementation there. Whether a kernel is a candidate at all (self-check
verdict, compiler, dtype) is decided in Python while tracing.

One ``custom_vjp`` around all implementations (they save the same residuals:
value, locations, weights), with a platform-dependent forward and a
platform-dependent backward, so no ``cond`` is ever transposed.

The Triton kernel is registered with :mod:`msvision.ops.kernel_selfcheck` (name
``MSDA_TRITON``): on a GPU host the first ``"auto"`` call checks it against the XLA
implementation (forward and gradients on a small input) and falls back to XLA with
a warning if it fails to compile or disagrees. The native CPU kernel is not
self-checked: it runs where it is tested (``tests/ops/test_msda_cpu.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from msvision.ops import kernel_selfcheck, platforms
from msvision.ops.msda import cpu_ffi
from msvision.ops.msda import xla as xla_impl

try:
    from msvision.ops.msda import triton_kernel
except ImportError:  # a JAX without the Pallas Triton backend (deprecated from 0.11): XLA only
    triton_kernel = None

MSDA_TRITON = "msda_triton"

SpatialShapes = tuple[tuple[int, int], ...]


class NativeKernelFallbackWarning(UserWarning):
    """The native CPU MSDA kernel could not be built; ``impl="auto"`` uses XLA on the CPU."""


_NATIVE_CPU_ALLOWED = contextvars.ContextVar("msda_native_cpu_allowed", default=True)


@contextlib.contextmanager
def without_native_cpu_kernel():
    """Within this context ``impl="auto"`` traces the XLA implementation for the CPU
    (for a ``jax.export`` artefact that must not depend on the native kernel).

    Only traces made inside the context are affected: a ``jax.jit`` function traced
    before keeps its cached trace.
    """
    token = _NATIVE_CPU_ALLOWED.set(False)
    try:
        yield
    finally:
        _NATIVE_CPU_ALLOWED.reset(token)


@functools.cache
def _warn_native_unavailable(reason: str) -> None:
    # Once per process (and reason): a missing compiler is a setup fact, not news at every trace.
    warnings.warn(f"the native CPU MSDA kernel is unavailable ({reason}); impl='auto' uses the XLA "
                  f"implementation on the CPU (set {cpu_ffi.DISABLE_ENV}=off to silence this)",
                  NativeKernelFallbackWarning, stacklevel=3)


def native_cpu_kernel_enabled(*arrays) -> bool:
    """Whether ``"auto"`` lowers the native kernel for the CPU for these inputs (decided at trace time).

    Only when the CPU is the default backend (elsewhere the CPU branch is hardly
    ever lowered, and building the kernel would cost a compile), outside
    :func:`without_native_cpu_kernel`, for non-float64 inputs, and if the kernel is
    available; a failed build warns once. Never raises.
    """
    if not _NATIVE_CPU_ALLOWED.get() or any(jnp.dtype(x.dtype) == jnp.float64 for x in arrays):
        return False
    try:
        if jax.default_backend() != "cpu" or cpu_ffi.disabled():
            return False
        if cpu_ffi.available():
            return True
        reason = cpu_ffi.unavailable_reason()
    except Exception as error:  # noqa: BLE001 - "auto" must never fail because of the optional kernel
        reason = f"{type(error).__name__}: {error}"
    _warn_native_unavailable(str(reason))
    return False


def _triton_forward(spatial_shapes, value, sampling_locations, attention_weights):
    return triton_kernel.msda_forward_pallas(value, spatial_shapes, sampling_locations, attention_weights)


def _triton_backward(spatial_shapes, value, sampling_locations, attention_weights, output_grad):
    value_grad, locations_grad, weights_grad = triton_kernel.msda_backward_pallas(
        value, spatial_shapes, sampling_locations, attention_weights, output_grad)
    return (value_grad.astype(value.dtype), locations_grad.astype(sampling_locations.dtype),
            weights_grad.astype(attention_weights.dtype))


def _native_forward(spatial_shapes, value, sampling_locations, attention_weights):
    return cpu_ffi._forward(value, spatial_shapes, sampling_locations, attention_weights, 0)


def _native_backward(spatial_shapes, value, sampling_locations, attention_weights, output_grad):
    return cpu_ffi._backward(spatial_shapes, 0, (value, sampling_locations, attention_weights), output_grad)


def _xla_forward(spatial_shapes, value, sampling_locations, attention_weights):
    return xla_impl._forward(value, spatial_shapes, sampling_locations, attention_weights)


def _xla_backward(spatial_shapes, value, sampling_locations, attention_weights, output_grad):
    return xla_impl._backward(spatial_shapes, (value, sampling_locations, attention_weights), output_grad)


def _branches(spatial_shapes, kernels, forward: bool) -> dict:
    """``lax.platform_dependent`` keyword arguments: a branch per platform with a kernel, XLA by default.

    ``kernels``: static ``(triton, native_cpu)`` booleans.
    """
    triton, native_cpu = kernels
    pick = lambda fwd, bwd: functools.partial(fwd if forward else bwd, spatial_shapes)  # noqa: E731
    branches = dict(default=pick(_xla_forward, _xla_backward))
    if triton:
        branches.update(cuda=pick(_triton_forward, _triton_backward), rocm=pick(_triton_forward, _triton_backward))
    if native_cpu:
        branches.update(cpu=pick(_native_forward, _native_backward))
    return branches


def _forward(value, spatial_shapes, sampling_locations, attention_weights, kernels):
    return platforms.platform_dependent(value, sampling_locations, attention_weights,
                                        **_branches(spatial_shapes, kernels, forward=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 4))
def _msda_platform_dependent(value, spatial_shapes, sampling_locations, attention_weights, kernels):
    return _forward(value, spatial_shapes, sampling_locations, attention_weights, kernels)


def _msda_fwd(value, spatial_shapes, sampling_locations, attention_weights, kernels):
    output = _forward(value, spatial_shapes, sampling_locations, attention_weights, kernels)
    return output, (value, sampling_locations, attention_weights)


def _msda_bwd(spatial_shapes, kernels, residuals, output_grad):
    return platforms.platform_dependent(*residuals, output_grad, **_branches(spatial_shapes, kernels, forward=False))


_msda_platform_dependent.defvjp(_msda_fwd, _msda_bwd)


def multiscale_deformable_attention_auto(value, spatial_shapes: SpatialShapes, sampling_locations,
                                         attention_weights):
    """The ``impl="auto"`` op; shapes as :func:`msvision.ops.msda.multiscale_deformable_attention`.

    Triton kernels when lowered for CUDA/ROCm, the native kernel when lowered for
    the CPU, each only if enabled (see the module docstring); else the XLA
    implementation.
    """
    kernels = (triton_kernel is not None and kernel_selfcheck.kernel_enabled(MSDA_TRITON),
               native_cpu_kernel_enabled(value, sampling_locations, attention_weights))
    if any(kernels):
        return _msda_platform_dependent(value, spatial_shapes, sampling_locations, attention_weights, kernels)
    return xla_impl.multiscale_deformable_attention_xla(value, spatial_shapes, sampling_locations,
                                                       attention_weights)


# --- self-check registration -------------------------------------------------------------
# Small enough to compile and run in well under a second, large enough to cover what
# the kernels special-case: two levels of different shapes, query count not a power
# of two (padding of the last query block), 6 channels (padding to 8), points
# outside the map (zero padding), several heads and a batch of two.
CHECK_SHAPES: SpatialShapes = ((6, 5), (3, 4))


def _check_inputs():
    rng = np.random.default_rng(0)
    batch, queries, heads, channels, points = 2, 11, 2, 6, 2
    total = sum(h * w for h, w in CHECK_SHAPES)
    value = rng.standard_normal((batch, total, heads, channels)).astype(np.float32)
    locations = rng.uniform(-0.1, 1.1, (batch, queries, heads, len(CHECK_SHAPES), points, 2)).astype(np.float32)
    weights = rng.random((batch, queries, heads, len(CHECK_SHAPES), points)).astype(np.float32)
    output_grad = rng.standard_normal((batch, queries, heads * channels)).astype(np.float32)
    return value, locations, weights, output_grad


def outputs_and_gradients(op):
    """``(value, locations, weights, output_grad) -> (output, (d value, d locations, d weights))`` of
    ``op(value, spatial_shapes, locations, weights)`` on :data:`CHECK_SHAPES`."""

    def run(value, locations, weights, output_grad):
        output, vjp = jax.vjp(lambda v, l, w: op(v, CHECK_SHAPES, l, w), value, locations, weights)
        return output, vjp(jnp.asarray(output_grad, output.dtype))

    return run


if triton_kernel is not None:
    kernel_selfcheck.register_kernel(
        MSDA_TRITON,
        kernel=outputs_and_gradients(triton_kernel.multiscale_deformable_attention_triton),
        reference=outputs_and_gradients(xla_impl.multiscale_deformable_attention_xla),
        make_inputs=_check_inputs,
        # float32 sums of at most 16 bilinear terms; atomics reorder the value-gradient sums.
        rtol=1e-4, atol=1e-5,
    )
