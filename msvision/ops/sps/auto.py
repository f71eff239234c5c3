"""SFM ``impl="auto"``: the Triton kernels on CUDA/ROCm, XLA elsewhere, chosen per lowering platform.

The pattern of :mod:`msvision.ops.msda.auto`: the choice is made inside the traced
function with ``lax.platform_dependent``, so it follows the platform the computation is
lowered for (lowering a train step for CUDA on a CPU-only host emits the Triton custom
calls; lowering for the CPU or TPU emits the XLA IdConvs). One ``custom_vjp`` around
both implementations, with a platform-dependent forward and backward, so no ``cond``
is ever transposed. Both save the same residuals, (table, neighbour ids, weights,
biases) — the IdConv contract of :mod:`.id_conv`; the XLA backward therefore
recomputes the three pre-activations to get the ReLU gates, as the Triton "gates"
kernel does.

The Triton kernel is registered with :mod:`msvision.ops.kernel_selfcheck` (name
:data:`SFM_TRITON`): on a GPU host the first ``"auto"`` call checks it against the XLA
implementation (forward and gradients on a small SPS map) and falls back to XLA with
a warning if it fails to compile or disagrees.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msvision.ops import kernel_selfcheck, platforms
from msvision.ops.sps.id_conv import _forward as id_conv_forward
from msvision.ops.sps.id_conv import _id_conv_bwd, neighbour_ids, sfm_xla

try:
    from msvision.ops.sps import triton_kernel
except ImportError:  # a JAX without the Pallas Triton backend (deprecated from 0.11): XLA only
    triton_kernel = None

SFM_TRITON = "sfm_triton"


def _xla_forward(table, ids, weights, biases):
    total = None
    for d in range(weights.shape[0]):
        branch = jax.nn.relu(id_conv_forward(table, ids[:, 9 * d:9 * (d + 1)], weights[d], biases[d]))
        total = branch if total is None else total + branch
    return total


def _xla_backward(table, ids, weights, biases, out_grad):
    compute = jnp.promote_types(jnp.result_type(table, weights), jnp.float32)
    table_grad = jnp.zeros(table.shape, compute)
    weight_grads, bias_grads = [], []
    for d in range(weights.shape[0]):
        branch_ids = ids[:, 9 * d:9 * (d + 1)]
        z = id_conv_forward(table, branch_ids, weights[d], biases[d])
        gate = jnp.where(z > 0, out_grad, jnp.zeros((), out_grad.dtype))  # jax.nn.relu's derivative
        dt, _, dw, db = _id_conv_bwd((table, branch_ids, weights[d]), gate)
        table_grad = table_grad + dt.astype(compute)
        weight_grads.append(dw)
        bias_grads.append(db)
    return table_grad.astype(table.dtype), jnp.stack(weight_grads), jnp.stack(bias_grads)


def _triton_forward(table, ids, weights, biases):
    return triton_kernel.sfm_forward_pallas(table, ids, weights, biases)


def _triton_backward(table, ids, weights, biases, out_grad):
    table_grad, weight_grad, bias_grad = triton_kernel.sfm_backward_pallas(table, ids, weights, biases, out_grad)
    return table_grad.astype(table.dtype), weight_grad.astype(weights.dtype), bias_grad.astype(biases.dtype)


def _forward(table, ids, weights, biases):
    return platforms.platform_dependent(table, ids, weights, biases, cuda=_triton_forward, rocm=_triton_forward,
                                  default=_xla_forward)


@jax.custom_vjp
def _sfm_platform_dependent(table, ids, weights, biases):
    return _forward(table, ids, weights, biases)


def _sfm_fwd(table, ids, weights, biases):
    return _forward(table, ids, weights, biases), (table, ids, weights, biases)


def _sfm_bwd(residuals, out_grad):
    table_grad, weight_grad, bias_grad = platforms.platform_dependent(
        *residuals, out_grad, cuda=_triton_backward, rocm=_triton_backward, default=_xla_backward)
    return table_grad, None, weight_grad, bias_grad


_sfm_platform_dependent.defvjp(_sfm_fwd, _sfm_bwd)


def sfm_auto(features_table, id_map, act_xy, act_roi, weights, biases, dilations: Sequence[int] = (1, 3, 5)):
    """The ``impl="auto"`` SFM; arguments as :func:`msvision.ops.sps.sfm`.

    Triton kernels when lowered for CUDA/ROCm and the kernel is enabled (module
    docstring), else the XLA IdConvs.
    """
    if triton_kernel is not None and kernel_selfcheck.kernel_enabled(SFM_TRITON):
        pad_id = features_table.shape[0] - 1
        ids = jnp.concatenate([neighbour_ids(id_map, act_xy, act_roi, d, pad_id) for d in dilations], axis=1)
        return _sfm_platform_dependent(features_table, ids, weights, biases)
    return sfm_xla(features_table, id_map, act_xy, act_roi, weights, biases, dilations)


# --- self-check registration -------------------------------------------------------------
# A small SPS map after one update (actives, passives, pad reads), channel counts that
# are not powers of two (the kernels pad them), 37 actives (a partial block).
def _check_inputs():
    from msvision.ops.sps.container import select_and_split, sps_from_dense

    rng = np.random.default_rng(0)
    dense = rng.standard_normal((2, 3, 3, 6)).astype(np.float32)
    sps = sps_from_dense(jnp.asarray(dense), jnp.asarray([True, False]))
    sps, _ = select_and_split(sps, jnp.asarray(rng.standard_normal(sps.num_active), jnp.float32), 9)
    table = np.asarray(sps.feature_table())
    weights = (0.3 * rng.standard_normal((3, 9 * 6, 5))).astype(np.float32)
    biases = (0.1 * rng.standard_normal((3, 5))).astype(np.float32)
    out_grad = rng.standard_normal((sps.num_active, 5)).astype(np.float32)
    return (table, np.asarray(sps.id_map), np.asarray(sps.act_xy), np.asarray(sps.act_roi), weights, biases,
            out_grad)


def outputs_and_gradients(op):
    """``(*check inputs) -> (output, (d table, d weights, d biases))`` of ``op(table, id_map, act_xy,
    act_roi, weights, biases)``."""

    def run(table, id_map, act_xy, act_roi, weights, biases, out_grad):
        output, vjp = jax.vjp(lambda t, w, b: op(t, id_map, act_xy, act_roi, w, b), table, weights, biases)
        return output, vjp(jnp.asarray(out_grad, output.dtype))

    return run


if triton_kernel is not None:
    kernel_selfcheck.register_kernel(
        SFM_TRITON,
        kernel=outputs_and_gradients(functools.partial(triton_kernel.sfm_triton, dilations=(1, 3, 5))),
        reference=outputs_and_gradients(functools.partial(sfm_xla, dilations=(1, 3, 5))),
        make_inputs=_check_inputs,
        # float32 sums of 27 taps × 6 channels; atomics reorder the passive-gradient sums.
        rtol=1e-4, atol=1e-5,
    )
