"""MSDA ``impl="auto"``: the Triton kernels on CUDA/ROCm, XLA elsewhere, chosen per lowering platform.

The choice is made inside the traced function with ``lax.platform_dependent`` (as
:mod:`msvision.ops.conv` does), so it follows the platform the computation is lowered
for, not the backend of the machine that traces it: lowering a train step for CUDA
on a CPU-only host (``python -m msvision.analysis --lower-for=cuda``) emits the
Triton custom calls, lowering it for the CPU or TPU emits the XLA gathers. Only the
branch of the lowering platform is lowered.

One ``custom_vjp`` around both implementations (they save the same residuals:
value, locations, weights), with a platform-dependent forward and a
platform-dependent backward, so no ``cond`` is ever transposed.

The Triton kernel is registered with :mod:`msvision.ops.kernel_selfcheck` (name
``MSDA_TRITON``): on a GPU host the first ``"auto"`` call checks it against the XLA
implementation (forward and gradients on a small input) and falls back to XLA with
a warning if it fails to compile or disagrees.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from msvision.ops import kernel_selfcheck
from msvision.ops.msda import xla as xla_impl

try:
    from msvision.ops.msda import triton_kernel
except ImportError:  # a JAX without the Pallas Triton backend (deprecated from 0.11): XLA only
    triton_kernel = None

MSDA_TRITON = "msda_triton"

SpatialShapes = tuple[tuple[int, int], ...]


def _triton_forward(spatial_shapes, value, sampling_locations, attention_weights):
    return triton_kernel.msda_forward_pallas(value, spatial_shapes, sampling_locations, attention_weights)


def _triton_backward(spatial_shapes, value, sampling_locations, attention_weights, output_grad):
    value_grad, locations_grad, weights_grad = triton_kernel.msda_backward_pallas(
        value, spatial_shapes, sampling_locations, attention_weights, output_grad)
    return (value_grad.astype(value.dtype), locations_grad.astype(sampling_locations.dtype),
            weights_grad.astype(attention_weights.dtype))


def _xla_forward(spatial_shapes, value, sampling_locations, attention_weights):
    return xla_impl._forward(value, spatial_shapes, sampling_locations, attention_weights)


def _xla_backward(spatial_shapes, value, sampling_locations, attention_weights, output_grad):
    return xla_impl._backward(spatial_shapes, (value, sampling_locations, attention_weights), output_grad)


def _forward(value, spatial_shapes, sampling_locations, attention_weights):
    triton = functools.partial(_triton_forward, spatial_shapes)
    return lax.platform_dependent(value, sampling_locations, attention_weights, cuda=triton, rocm=triton,
                                  default=functools.partial(_xla_forward, spatial_shapes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _msda_platform_dependent(value, spatial_shapes, sampling_locations, attention_weights):
    return _forward(value, spatial_shapes, sampling_locations, attention_weights)


def _msda_fwd(value, spatial_shapes, sampling_locations, attention_weights):
    output = _forward(value, spatial_shapes, sampling_locations, attention_weights)
    return output, (value, sampling_locations, attention_weights)


def _msda_bwd(spatial_shapes, residuals, output_grad):
    triton = functools.partial(_triton_backward, spatial_shapes)
    return lax.platform_dependent(*residuals, output_grad, cuda=triton, rocm=triton,
                                  default=functools.partial(_xla_backward, spatial_shapes))


_msda_platform_dependent.defvjp(_msda_fwd, _msda_bwd)


def multiscale_deformable_attention_auto(value, spatial_shapes: SpatialShapes, sampling_locations,
                                         attention_weights):
    """The ``impl="auto"`` op; shapes as :func:`msvision.ops.msda.multiscale_deformable_attention`.

    Triton kernels when lowered for CUDA/ROCm and the kernel is enabled (see module
    docstring), else the XLA implementation.
    """
    if triton_kernel is not None and kernel_selfcheck.kernel_enabled(MSDA_TRITON):
        return _msda_platform_dependent(value, spatial_shapes, sampling_locations, attention_weights)
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
