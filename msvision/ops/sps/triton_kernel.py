"""Pallas (Triton backend) kernels for the fused SFM gather-convolution on GPUs.

All Triton-specific SPS code lives here (the Pallas Triton backend is deprecated from
jax 0.11; a Mosaic GPU version can replace this module behind ``sfm(..., impl=...)``).
Semantics: :func:`msvision.ops.sps.id_conv.sfm_xla`, Σ_d ReLU(IdConv_d) (thesis §5.3.3).

Layout handed to the kernels (prepared in XLA by :func:`sfm_triton`):
the table ``[N + 1, Fp]`` (last row zero), the neighbour ids ``[A_pad, T]`` with
T = 9·D taps (dilation-major, then (ky, kx) row-major; padding actives read the pad
row), weights ``[T·Fp, Fop]`` and biases ``[D·Fop]``. Channels are zero-padded to
powers of two >= 16 (Triton block shapes and ``dot`` minimum), actives to a multiple of
``block_actives``.

Kernels:

- forward, grid ``A_pad / block_actives``: each program loads the T ids of its
  ``block_actives`` actives, then per dilation 9 ``[block, Fp]`` row gathers, each
  times its ``[Fp, Fop]`` weight tile (``dot``, float32 accumulation), + bias, ReLU,
  and sums the D branches: one ``[block, Fop]`` store, no im2col in memory;
- backward "gates": recomputes the pre-activations and stores
  ``G_d = dY · [z_d > 0]`` ``[D·A_pad, Fop]`` (float32);
- backward "actives": the reverse gather. Active a' at p is read through tap k only by
  the cell at p - d·o_k, its neighbour through the mirrored tap 8 - k; if that is an
  active a, add ``G_d[a] · W_kᵀ``. Plain stores, no atomics;
- backward "passives": one active per program; for every tap whose neighbour is a
  passive (``pl.when``) it adds ``G_d[a] · W_kᵀ`` into a float32 table gradient with
  ``atomic_add``. One active per program because Pallas's interpret mode discharges a
  vector atomic as gather + scatter-set, so two lanes adding to the same passive would
  lose one update on CPU (see ``tests/ops/test_msda_pallas.py``); with one active the
  lanes are the Fp distinct channels of one row, so interpret mode checks the exact
  code that runs on the GPU.
- dW_t = Σ_a X_t(a)ᵀ G_d(a) and db = Σ_a G_d(a) stay in XLA (a gather and a matmul per
  tap in a ``lax.scan``): deterministic, and cheaper than 27 contended [Fp, Fop] atomic
  tiles per program.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from msvision.ops.sps.id_conv import neighbour_ids

__all__ = ["sfm_triton", "sfm_forward_pallas", "sfm_backward_pallas"]


def _padded_channels(n: int) -> int:
    return max(16, 1 << max(0, (int(n) - 1).bit_length()))


class _Geometry:
    """Static sizes of one call."""

    def __init__(self, num_rows: int, num_active: int, channels: int, out_channels: int, num_dilations: int,
                 block_actives: int):
        self.num_rows = num_rows  # N + 1 (the pad row included)
        self.pad_id = num_rows - 1
        self.num_active = num_active
        self.block = block_actives
        self.active_padded = pl.cdiv(num_active, block_actives) * block_actives
        self.channels = channels
        self.out_channels = out_channels
        self.fp = _padded_channels(channels)
        self.fop = _padded_channels(out_channels)
        self.dilations = num_dilations
        self.taps = 9 * num_dilations


def _dot(a, b, *, trans_a=False, trans_b=False):
    # Exact fp32 products for fp32 inputs (no TF32), fp32 accumulation for every dtype.
    allow_tf32 = False if a.dtype == jnp.float32 and b.dtype == jnp.float32 else None
    return pltriton.dot(a, b, trans_a=trans_a, trans_b=trans_b, allow_tf32=allow_tf32)


def _block_rows(g: _Geometry):
    return pl.program_id(0) * g.block + jnp.arange(g.block, dtype=jnp.int32)


def _weight_tile(weight_ref, g: _Geometry, tap: int):
    rows = tap * g.fp + jnp.arange(g.fp, dtype=jnp.int32)
    return weight_ref[rows[:, None], jnp.arange(g.fop, dtype=jnp.int32)[None, :]]


def _gather_rows(table_ref, ids, g: _Geometry):
    return table_ref[ids[:, None], jnp.arange(g.fp, dtype=jnp.int32)[None, :]]


def _pre_activation(table_ref, ids_ref, weight_ref, bias_ref, rows, g: _Geometry, dilation_index):
    """z_d [block, Fop] float32 for dilation branch ``dilation_index`` (static or traced)."""
    out_channels = jnp.arange(g.fop, dtype=jnp.int32)
    bias = bias_ref[dilation_index * g.fop + out_channels].astype(jnp.float32)

    def tap_step(k, acc):
        tap = 9 * dilation_index + k
        ids = ids_ref[rows * g.taps + tap]
        return acc + _dot(_gather_rows(table_ref, ids, g), _weight_tile(weight_ref, g, tap))

    # A loop, not a Python unroll: a compact kernel (and 4x faster interpret-mode compiles).
    return jax.lax.fori_loop(0, 9, tap_step, jnp.zeros((g.block, g.fop), jnp.float32) + bias[None, :])


def _forward_kernel(table_ref, ids_ref, weight_ref, bias_ref, out_ref, *, g: _Geometry):
    rows = _block_rows(g)
    total = jax.lax.fori_loop(
        0, g.dilations,
        lambda d, acc: acc + jnp.maximum(_pre_activation(table_ref, ids_ref, weight_ref, bias_ref, rows, g, d), 0.0),
        jnp.zeros((g.block, g.fop), jnp.float32))
    out_ref[rows[:, None], jnp.arange(g.fop, dtype=jnp.int32)[None, :]] = total.astype(out_ref.dtype)


def _gates_kernel(table_ref, ids_ref, weight_ref, bias_ref, out_grad_ref, gates_ref, *, g: _Geometry):
    rows = _block_rows(g)
    out_channels = jnp.arange(g.fop, dtype=jnp.int32)[None, :]
    out_grad = out_grad_ref[rows[:, None], out_channels].astype(jnp.float32)
    @pl.loop(0, g.dilations)
    def _(d):
        z = _pre_activation(table_ref, ids_ref, weight_ref, bias_ref, rows, g, d)
        # jax.nn.relu's derivative: 1 where z > 0, 0 elsewhere (including z == 0).
        gates_ref[(d * g.active_padded + rows)[:, None], out_channels] = jnp.where(z > 0.0, out_grad, 0.0)


def _active_grad_kernel(ids_ref, weight_ref, gates_ref, act_grad_ref, *, g: _Geometry):
    rows = _block_rows(g)
    out_channels = jnp.arange(g.fop, dtype=jnp.int32)[None, :]
    def tap_step(tap, acc):
        d, k = jax.lax.div(tap, 9), jax.lax.rem(tap, 9)  # (jnp's // and % do not lower to Triton here)
        # The referrer of this active through tap k is its neighbour through tap 8-k.
        referrer = ids_ref[rows * g.taps + 9 * d + (8 - k)]
        is_active = referrer < g.num_active
        gate_rows = d * g.active_padded + jnp.where(is_active, referrer, 0)
        gates = pltriton.load(gates_ref.at[gate_rows[:, None], out_channels], mask=is_active[:, None], other=0.0)
        return acc + _dot(gates, _weight_tile(weight_ref, g, tap).astype(jnp.float32), trans_b=True)

    acc = jax.lax.fori_loop(0, g.taps, tap_step, jnp.zeros((g.block, g.fp), jnp.float32))
    act_grad_ref[rows[:, None], jnp.arange(g.fp, dtype=jnp.int32)[None, :]] = acc


def _passive_grad_kernel(ids_ref, weight_ref, gates_ref, table_grad_init_ref, table_grad_ref, *, g: _Geometry):
    del table_grad_init_ref  # aliased to table_grad_ref (zeros)
    row = pl.program_id(0)
    channels = jnp.arange(g.fp, dtype=jnp.int32)
    out_channels = jnp.arange(g.fop, dtype=jnp.int32)
    @pl.loop(0, g.taps)
    def _(tap):
        d = jax.lax.div(tap, 9)
        neighbour = ids_ref[row * g.taps + tap]

        @pl.when((neighbour >= g.num_active) & (neighbour < g.pad_id))
        def _():
            gates = gates_ref[(d * g.active_padded + row) * g.fop + out_channels]  # [Fop]
            weight = _weight_tile(weight_ref, g, tap).astype(jnp.float32)  # [Fp, Fop]
            contribution = jnp.sum(weight * gates[None, :], axis=1)  # [Fp]
            pltriton.atomic_add(table_grad_ref, (neighbour * g.fp + channels,), contribution)


def _compiler_params(num_warps: int, num_stages: int):
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _prepare(table, ids, weights, biases, block_actives):
    """Pad channels to powers of two >= 16 and actives to the block; returns kernel operands."""
    num_rows, channels = table.shape
    num_active, taps = ids.shape
    num_dilations, _, out_channels = weights.shape
    g = _Geometry(num_rows, num_active, channels, out_channels, num_dilations, block_actives)
    table_p = jnp.pad(table, ((0, 0), (0, g.fp - channels)))
    ids_p = jnp.pad(ids, ((0, g.active_padded - num_active), (0, 0)), constant_values=g.pad_id)
    weights_p = weights.reshape(num_dilations * 9, channels, out_channels)
    weights_p = jnp.pad(weights_p, ((0, 0), (0, g.fp - channels), (0, g.fop - out_channels)))
    biases_p = jnp.pad(biases, ((0, 0), (0, g.fop - out_channels)))
    return g, table_p, ids_p.reshape(-1), weights_p.reshape(-1, g.fop).astype(table.dtype), biases_p.reshape(-1)


def sfm_forward_pallas(table, ids, weights, biases, *, block_actives: int = 64, num_warps: int = 4,
                       num_stages: int = 1, interpret: bool = False):
    """Forward kernel call.

    Args:
        table: [N + 1, F] (last row zero); ids: [A, 9·D] int32 neighbour ids, dilation-major;
        weights: [D, 9·F, F_out]; biases: [D, F_out].

    Returns:
        [A, F_out] in ``table.dtype``.
    """
    g, table_p, ids_p, weights_p, biases_p = _prepare(table, ids, weights, biases, block_actives)
    out = pl.pallas_call(
        functools.partial(_forward_kernel, g=g),
        out_shape=jax.ShapeDtypeStruct((g.active_padded, g.fop), table.dtype),
        grid=(g.active_padded // g.block,),
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="sfm_forward",
    )(table_p, ids_p, weights_p, biases_p)
    return out[:g.num_active, :g.out_channels]


def sfm_backward_pallas(table, ids, weights, biases, out_grad, *, block_actives: int = 64, num_warps: int = 4,
                        num_stages: int = 1, interpret: bool = False):
    """Backward kernel calls -> (table_grad [N+1, F] fp32, weights_grad [D, 9F, F_out] fp32,
    biases_grad [D, F_out] fp32). The pad row's gradient is zero (a constant by contract)."""
    g, table_p, ids_p, weights_p, biases_p = _prepare(table, ids, weights, biases, block_actives)
    out_grad_p = jnp.pad(out_grad.astype(jnp.float32),
                         ((0, g.active_padded - g.num_active), (0, g.fop - g.out_channels)))
    params = _compiler_params(num_warps, num_stages)
    gates = pl.pallas_call(
        functools.partial(_gates_kernel, g=g),
        out_shape=jax.ShapeDtypeStruct((g.dilations * g.active_padded, g.fop), jnp.float32),
        grid=(g.active_padded // g.block,), compiler_params=params, interpret=interpret, name="sfm_backward_gates",
    )(table_p, ids_p, weights_p, biases_p, out_grad_p)
    act_grad = pl.pallas_call(
        functools.partial(_active_grad_kernel, g=g),
        out_shape=jax.ShapeDtypeStruct((g.active_padded, g.fp), jnp.float32),
        grid=(g.active_padded // g.block,), compiler_params=params, interpret=interpret,
        name="sfm_backward_actives",
    )(ids_p, weights_p, gates)
    rest_grad = pl.pallas_call(
        functools.partial(_passive_grad_kernel, g=g),
        out_shape=jax.ShapeDtypeStruct((g.num_rows * g.fp,), jnp.float32),  # atomics need fp32
        grid=(g.num_active,), input_output_aliases={3: 0}, compiler_params=_compiler_params(1, 1),
        interpret=interpret, name="sfm_backward_passives",
    )(ids_p, weights_p, gates.reshape(-1), jnp.zeros((g.num_rows * g.fp,), jnp.float32))
    rest_grad = rest_grad.reshape(g.num_rows, g.fp)
    table_grad = jnp.concatenate([act_grad[:g.num_active], rest_grad[g.num_active:]], axis=0)[:, :g.channels]

    # Weight and bias gradients in XLA: per tap a row gather and a [F, A] x [A, F_out] matmul.
    # One tap per scan step keeps a single [A, F] gather alive.
    gates = gates.reshape(g.dilations, g.active_padded, g.fop)[:, :g.num_active, :g.out_channels]

    def tap_weight_grad(_, tap):
        rows = table.at[ids[:, tap]].get(mode="promise_in_bounds").astype(jnp.float32)
        return None, jnp.dot(rows.T, gates[tap // 9], precision=jax.lax.Precision.HIGHEST)

    _, weight_grad = jax.lax.scan(tap_weight_grad, None, jnp.arange(g.taps))
    return table_grad, weight_grad.reshape(weights.shape), jnp.sum(gates, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sfm_triton(table, ids, weights, biases, interpret):
    return sfm_forward_pallas(table, ids, weights, biases, interpret=interpret)


def _sfm_triton_fwd(table, ids, weights, biases, interpret):
    return sfm_forward_pallas(table, ids, weights, biases, interpret=interpret), (table, ids, weights, biases)


def _sfm_triton_bwd(interpret, residuals, out_grad):
    table, ids, weights, biases = residuals
    table_grad, weight_grad, bias_grad = sfm_backward_pallas(table, ids, weights, biases, out_grad,
                                                             interpret=interpret)
    return (table_grad.astype(table.dtype), None, weight_grad.astype(weights.dtype), bias_grad.astype(biases.dtype))


_sfm_triton.defvjp(_sfm_triton_fwd, _sfm_triton_bwd)


def sfm_triton(features_table, id_map, act_xy, act_roi, weights, biases, dilations: Sequence[int] = (1, 3, 5), *,
               interpret: bool = False):
    """Pallas Triton SFM with the contract of :func:`msvision.ops.sps.sfm` (``impl="triton"``).

    Shapes as :func:`msvision.ops.sps.id_conv.sfm_xla`; output in the table's dtype,
    float32 accumulation. ``interpret=True`` runs the kernels in Pallas's interpreter.
    """
    features_table, weights, biases = map(jnp.asarray, (features_table, weights, biases))
    pad_id = features_table.shape[0] - 1
    ids = jnp.concatenate([neighbour_ids(id_map, act_xy, act_roi, d, pad_id) for d in dilations], axis=1)
    return _sfm_triton(features_table, ids, weights, biases, bool(interpret))
