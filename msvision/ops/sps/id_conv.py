"""IdConv: a 3x3 (dilated) convolution on the active cells of an SPS map (thesis §5.3.2).

For every active cell at (x, y) of RoI r, the 9 neighbours at (x + d·(kx-1), y + d·(ky-1))
are looked up in the id map (cells outside the RoI grid read the pad id, a zero row), their
features gathered from the table ``[act; pas; 0]`` and multiplied with
``W [9·F_in, F_out]`` whose rows are tap-major, taps (ky, kx) row-major, then channels
(the ``[out, 9·in]`` weight of the author's ``IdConv2d``, DetSeg ``models/modules/sps.py``,
transposed).

The VJP is hand-written (``jax.custom_vjp``) and saves only (table, ids, W): autodiff
would keep the [A, 9F] im2col (184 MB per dilation at stage 1, A = 40,000, F = 128) and
build a scatter-add for the table gradient. Forward and backward run one tap per step
of a ``lax.scan`` (one [A, F] gather alive at a time). Backward, per tap k:

- dW_k = X_kᵀ · dY with the gathered rows X_k recomputed, db = Σ dY;
- d(actives) by a reverse gather: every active occupies exactly one grid cell p, so its
  only referrer through tap k is the cell at p - d·o_k, which is the neighbour of the
  active through the mirrored tap 8 - k; if that cell is an active a, the gradient is
  dX[a, k]. No scatter;
- d(passives) by an unsorted scatter-add of the (active, tap) pairs that read a passive.
  XLA:CPU lowers scatter-add to a serial loop (jax-ml/jax#38806; slower again from
  jaxlib 0.10.2, #39959) and a sorted ``segment_sum`` itself is ~10x faster than an
  unsorted one, but sorting the ids and permuting the [9A, F] rows costs more than that
  saves: measured on XLA:CPU, jaxlib 0.10.2, at the thesis's sizes, the unsorted
  scatter is 2.2-2.9x faster (``benchmarks/bench_sps.py`` section (c), which times both
  methods of :func:`passive_gradient`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp

__all__ = ["neighbour_ids", "id_conv", "sfm_xla", "sps_macs", "TAP_OFFSETS", "unrolled_taps"]

_TAP_UNROLL = 1  # lax.scan unroll of the 9 taps; see unrolled_taps


@contextlib.contextmanager
def unrolled_taps() -> Iterator[None]:
    """Functions traced inside run the 9 taps unrolled instead of in a ``lax.scan``.

    For cost analysis only: XLA's ``cost_analysis()`` counts a while loop's body once,
    whatever its trip count, so with the scan it sees one tap of nine (8/9 of the IdConv
    MACs missing: 20.6 G of the thesis-size EffSeg head's 101 G). Unrolled, the same
    computation is counted in full. ``msvision.analysis.cost.compile_cost`` traces inside
    this context; training and inference keep the scan (less memory, faster on XLA:CPU).
    Jitted functions already traced keep their scan (trace caches are not invalidated).
    """
    global _TAP_UNROLL
    previous, _TAP_UNROLL = _TAP_UNROLL, True
    try:
        yield
    finally:
        _TAP_UNROLL = previous

# (dx, dy) unit offset of tap k = 3·ky + kx.
TAP_OFFSETS = tuple((kx - 1, ky - 1) for ky in range(3) for kx in range(3))


def neighbour_ids(id_map: jax.Array, act_xy: jax.Array, act_roi: jax.Array, dilation: int,
                  pad_id: int) -> jax.Array:
    """Ids of the 3x3 neighbours at distance ``dilation`` of every active cell.

    Args:
        id_map: [R, S, S] int32 feature ids (row y, column x).
        act_xy: [A, 2] int32 (x, y) cell of each active.
        act_roi: [A] int32 RoI of each active.
        dilation: static int >= 1.
        pad_id: static int, the id read outside the grid (the zero row).

    Returns:
        [A, 9] int32, taps (ky, kx) row-major.
    """
    rois, size, _ = id_map.shape
    flat = id_map.reshape(-1)
    offsets = jnp.asarray(TAP_OFFSETS, jnp.int32) * int(dilation)  # [9, 2]
    pos = act_xy[:, None, :].astype(jnp.int32) + offsets[None]  # [A, 9, 2]
    x, y = pos[..., 0], pos[..., 1]
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    index = (act_roi[:, None].astype(jnp.int32) * size + jnp.clip(y, 0, size - 1)) * size + jnp.clip(x, 0, size - 1)
    return jnp.where(inside, flat.at[index].get(mode="promise_in_bounds"), pad_id).astype(jnp.int32)


def _accumulation_dtype(*arrays):
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _forward(table, ids, weight, bias):
    """Σ_k table[ids[:, k]] · W_k + b, one tap per step of a ``lax.scan``.

    Per tap, not one [A, 9F] gather and one matmul: on XLA:CPU the scan is faster
    (stage 1: 595 vs 908 ms) and keeps one [A, F] gather alive instead of the im2col
    (39 vs 176 MiB of temporaries).
    """
    compute = _accumulation_dtype(table, weight)
    channels = table.shape[-1]
    weight_taps = weight.astype(compute).reshape(9, channels, -1)

    def tap(acc, k):
        rows = table.at[ids[:, k]].get(mode="promise_in_bounds").astype(compute)
        return acc + jnp.dot(rows, weight_taps[k], precision=jax.lax.Precision.HIGHEST), None

    init = jnp.zeros((ids.shape[0], weight.shape[-1]), compute) + bias.astype(compute)
    out, _ = jax.lax.scan(tap, init, jnp.arange(9), unroll=_TAP_UNROLL)
    return out.astype(table.dtype)


@jax.custom_vjp
def _id_conv(table, ids, weight, bias):
    return _forward(table, ids, weight, bias)


def _id_conv_fwd(table, ids, weight, bias):
    return _forward(table, ids, weight, bias), (table, ids, weight)


def passive_gradient(values: jax.Array, ids: jax.Array, num_active: int, num_rows: int,
                     method: str = "sorted") -> jax.Array:
    """Σ of ``values`` rows per passive id.

    Args:
        values: [A, 9, F] gradient of every gathered neighbour.
        ids: [A, 9] int32 ids they were gathered from.
        num_active, num_rows: static A and N + 1 (table rows).
        method: "sorted" (argsort the ids, permute the rows, ``segment_sum`` with
            ``indices_are_sorted``) or "scatter" (one unsorted scatter-add).

    Returns:
        [N + 1 - A, F]: rows A..N of the table gradient; the pad row N is a constant
        zero by contract, its gradient is zero.
    """
    channels = values.shape[-1]
    flat_ids = ids.reshape(-1)
    pad = num_rows - 1
    # Actives (handled by the reverse gather) and the pad go to the last segment (the pad's).
    is_passive = (flat_ids >= num_active) & (flat_ids < pad)
    segment = jnp.where(is_passive, flat_ids - num_active, pad - num_active)
    rows = values.reshape(-1, channels)
    if method == "sorted":
        segment, order = jax.lax.sort((segment, jnp.arange(segment.shape[0], dtype=jnp.int32)), num_keys=1,
                                      is_stable=False)
        rows = rows.at[order].get(mode="promise_in_bounds")
    elif method != "scatter":
        raise ValueError(f"unknown passive-gradient method {method!r}")
    summed = jax.ops.segment_sum(rows, segment, num_segments=num_rows - num_active,
                                 indices_are_sorted=method == "sorted", mode="promise_in_bounds")
    return summed.at[-1].set(0)


def _id_conv_bwd(residuals, out_grad):
    table, ids, weight = residuals
    compute = _accumulation_dtype(table, weight)
    num_active, num_rows = ids.shape[0], table.shape[0]
    pad = num_rows - 1
    channels = table.shape[-1]
    out_grad = out_grad.astype(compute)
    weight_taps = weight.astype(compute).reshape(9, channels, -1)

    # Reverse gather for the actives: the referrer through tap k = the neighbour through tap 8-k.
    referrer = ids[:, ::-1]
    is_active = referrer < num_active
    referrer = jnp.where(is_active, referrer, 0)
    # Passive rows: an unsorted scatter-add per tap (module docstring); actives and the pad
    # go to the pad's row, zeroed at the end.
    segment = jnp.where((ids >= num_active) & (ids < pad), ids - num_active, pad - num_active)

    def tap(carry, k):
        active_grad, passive_grad = carry
        rows = table.at[ids[:, k]].get(mode="promise_in_bounds").astype(compute)  # [A, F]
        weight_grad = jnp.dot(rows.T, out_grad, precision=jax.lax.Precision.HIGHEST)
        rows_grad = jnp.dot(out_grad, weight_taps[k].T, precision=jax.lax.Precision.HIGHEST)  # [A, F]
        active_grad = active_grad + jnp.where(
            is_active[:, k, None], rows_grad.at[referrer[:, k]].get(mode="promise_in_bounds"), 0)
        passive_grad = passive_grad.at[segment[:, k]].add(rows_grad, mode="promise_in_bounds")
        return (active_grad, passive_grad), weight_grad

    # One tap per scan step: one [A, F] gather and gradient alive at a time instead of the
    # [A, 9F] im2col and its gradient (stage 1: 1.13 vs 1.62 s, 47 vs 357 MiB on XLA:CPU).
    init = (jnp.zeros((num_active, channels), compute), jnp.zeros((num_rows - num_active, channels), compute))
    (active_grad, passive_grad), weight_grad = jax.lax.scan(tap, init, jnp.arange(9), unroll=_TAP_UNROLL)
    table_grad = jnp.concatenate([active_grad, passive_grad.at[-1].set(0)], axis=0)
    return (table_grad.astype(table.dtype), None, weight_grad.reshape(weight.shape).astype(weight.dtype),
            jnp.sum(out_grad, axis=0).astype(weight.dtype))


_id_conv.defvjp(_id_conv_fwd, _id_conv_bwd)


def id_conv(features_table: jax.Array, id_map: jax.Array, act_xy: jax.Array, act_roi: jax.Array,
            weight: jax.Array, bias: jax.Array, dilation: int) -> jax.Array:
    """3x3 convolution with dilation ``dilation`` at the active cells of an SPS map.

    Args:
        features_table: [N + 1, F_in] float = [act (A rows); pas; 0], last row zero
            (``SPS.feature_table()``). Rows 0..A-1 must be the actives in ``act_xy`` order.
        id_map: [R, S, S] int32 feature ids.
        act_xy: [A, 2] int32 (x, y) of every active; act_roi: [A] int32.
        weight: [9·F_in, F_out], rows (ky, kx, channel) row-major; bias: [F_out].
        dilation: static int.

    Returns:
        [A, F_out] in the table's dtype (accumulated in float32, float64 for float64).
        Invalid actives get finite values of no meaning.
    """
    features_table, weight, bias = map(jnp.asarray, (features_table, weight, bias))
    if weight.shape[0] != 9 * features_table.shape[-1]:
        raise ValueError(f"weight {weight.shape} does not match 9 x {features_table.shape[-1]} input channels")
    ids = neighbour_ids(id_map, act_xy, act_roi, dilation, features_table.shape[0] - 1)
    return _id_conv(features_table, ids, weight, bias)


def sfm_xla(features_table: jax.Array, id_map: jax.Array, act_xy: jax.Array, act_roi: jax.Array,
            weights: jax.Array, biases: jax.Array, dilations: Sequence[int] = (1, 3, 5)) -> jax.Array:
    """Fused SFM core Σ_d ReLU(IdConv_d) (thesis §5.3.3; DetSeg ``models/modules/sps.py``, ``IdConv2d``)
    with XLA IdConvs.

    Args:
        weights: [D, 9·F_in, F_out]; biases: [D, F_out]; one per dilation.
        Other arguments as :func:`id_conv`.

    Returns:
        [A, F_out] in the table's dtype.
    """
    total = None
    for i, dilation in enumerate(dilations):
        branch = jax.nn.relu(id_conv(features_table, id_map, act_xy, act_roi, weights[i], biases[i], dilation))
        total = branch if total is None else total + branch
    return total


def sps_macs(num_valid_active: int | jax.Array, in_channels: int, out_channels: int,
             num_convs: int = 1) -> int | jax.Array:
    """Analytic IdConv cost in multiply-adds: 9·C_in·numel(out) over the VALID actives (the author's
    FLOP handle, DetSeg ``utils/flops.py``, ``id_conv2d_flop_jit``).

    XLA's cost analysis counts the capacity A (invalid slots included); the thesis's
    FLOPs (fvcore handle of the released code) count the real cells. ``num_convs`` = 3
    for the SFM (one IdConv per dilation).
    """
    return 9 * in_channels * num_valid_active * out_channels * num_convs
