"""Gather-based XLA multi-scale deformable attention with a hand-written VJP.

Semantics are those of Deformable DETR's ``ms_deform_attn_core_pytorch`` (see
:mod:`msvision.ops.msda.reference` for shapes and coordinate conventions): per level,
bilinear ``grid_sample`` with ``align_corners=False`` and zero padding (the corner
weights of :mod:`msvision.ops.bilinear`), then a weighted sum over levels and points.

Implementation choices (measured on CPU, see benchmarks/RESULTS.md):
- The value is never transposed: it is viewed as a table of rows
  ``[B * S * M, C]`` and every bilinear corner is one row gather
  (``row = (b * S + level_start + y * W_l + x) * M + m``). No one-hot matrices.
- Levels are unrolled statically (their shapes are static). The forward is written
  as one elementwise sum over (level, point, corner) of weight x gathered row, which
  XLA fuses into a single loop: the [..., 4·L·P, C] corner samples never exist in
  memory (gather-then-reduce was 2-3x slower on CPU, all memory traffic).
- ``jax.custom_vjp``: autodiff of the forward would keep the gathered corners and
  build a scatter per corner; the hand-written rule recomputes the gathers (fused
  per-channel column gathers for the ``<dL/dout, corner>`` dot products, one level
  per step of a ``lax.scan``: over all levels at once XLA:CPU wrote every column
  gather to memory; DefEncoder-shape backward 900 -> 680 ms), gets the
  location and weight gradients from the four corner weights, and accumulates the
  value gradient with one scatter-add per (level, point, corner) inside a
  ``lax.scan`` (one live [B, Q, M, C] update buffer instead of 4·L·P of them).
- Everything accumulates in float32 (float64 for float64 inputs); the output and
  the gradients are cast back to the input dtypes (so bf16 inputs only suffer bf16
  input/output rounding).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from msvision.ops.bilinear import BilinearCorners, bilinear_corners
from msvision.ops.msda.reference import level_start_indices

SpatialShapes = tuple[tuple[int, int], ...]


def accumulation_dtype(*arrays) -> jnp.dtype:
    """float32 for half/single inputs, float64 for float64 inputs (finite-difference tests)."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _value_rows(value: jax.Array) -> jax.Array:
    """[B, S, M, C] -> [B * S * M, C] (a free reshape)."""
    return value.reshape(-1, value.shape[-1])


def _corner_rows(pixel_index: jax.Array, level_start: int, total_pixels: int) -> jax.Array:
    """Row of every corner in ``_value_rows(value)``.

    pixel_index: [B, Q, M, P, 4] -> rows [B, Q, M, P, 4] ``(b*S + start + pix)*M + m``.
    """
    batch, _, heads = pixel_index.shape[:3]
    b = jnp.arange(batch, dtype=jnp.int32)[:, None, None, None, None]
    m = jnp.arange(heads, dtype=jnp.int32)[None, None, :, None, None]
    return (b * total_pixels + level_start + pixel_index) * heads + m


def _levels(spatial_shapes: SpatialShapes):
    starts = level_start_indices(spatial_shapes)
    return [(level, starts[level], h, w) for level, (h, w) in enumerate(spatial_shapes)]


def _level_corners(sampling_locations: jax.Array, level: int, height: int,
                   width: int) -> BilinearCorners:
    locations = sampling_locations[:, :, :, level]  # [B, Q, M, P, 2], accumulation dtype
    return bilinear_corners(locations[..., 0], locations[..., 1], height, width)


def _all_level_corners(sampling_locations, attention_weights, spatial_shapes, total_pixels):
    """Rows and weights of every bilinear corner of every level, levels unrolled.

    Returns a list over levels of (rows, corner_weights, corners), with rows and
    corner_weights [B, Q, M, P, 4]; corner_weights = attention weight x bilinear weight.
    """
    result = []
    for level, start, height, width in _levels(spatial_shapes):
        corners = _level_corners(sampling_locations, level, height, width)
        rows = _corner_rows(corners.pixel_index, start, total_pixels)
        attention = attention_weights[:, :, :, level, :, None]
        result.append((rows, attention * corners.weight, corners))
    return result


def _weighted_gather_sum(rows_table: jax.Array, rows: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_k weights[..., k] * rows_table[rows[..., k]] -> [..., C] in float32.

    Written as a sum of one gather per corner (k is small and static) so that XLA
    fuses all gathers, products and sums into one loop over the output: the
    [..., K, C] corner samples are never materialised (that would cost 4x the
    output of ``grid_sample`` in memory traffic).
    """
    total = None
    for k in range(rows.shape[-1]):
        sample = rows_table.at[rows[..., k]].get(mode="promise_in_bounds").astype(weights.dtype)
        term = weights[..., k, None] * sample
        total = term if total is None else total + term
    return total


def _gather_dot(rows_table: jax.Array, rows: jax.Array, vectors: jax.Array) -> jax.Array:
    """<vectors, rows_table[rows]> over channels without materialising the gather.

    rows: [..., K] int32; vectors: [..., C] -> [..., K] float32. One column gather per
    channel keeps it an elementwise loop fusion (a reduce over a gathered [..., K, C]
    would materialise it on CPU).
    """
    total = None
    for c in range(rows_table.shape[-1]):
        column = rows_table[:, c].at[rows].get(mode="promise_in_bounds").astype(vectors.dtype)
        term = vectors[..., c, None] * column
        total = term if total is None else total + term
    return total


def _forward(value, spatial_shapes, sampling_locations, attention_weights):
    compute = accumulation_dtype(value, sampling_locations, attention_weights)
    sampling_locations = sampling_locations.astype(compute)
    attention_weights = attention_weights.astype(compute)
    batch, total_pixels, heads, channels = value.shape
    queries, points = sampling_locations.shape[1], sampling_locations.shape[4]
    rows_table = _value_rows(value)
    per_level = _all_level_corners(sampling_locations, attention_weights, spatial_shapes, total_pixels)
    output = sum(_weighted_gather_sum(rows_table, r.reshape(batch, queries, heads, points * 4),
                                      w.reshape(batch, queries, heads, points * 4))
                 for r, w, _ in per_level)  # [B, Q, M, C]
    return output.astype(value.dtype).reshape(batch, queries, heads * channels)


def _scatter_add_rows(table_grad: jax.Array, rows: jax.Array, weights: jax.Array,
                      output_grad: jax.Array) -> jax.Array:
    """table_grad[rows[..., k]] += weights[..., k] * output_grad, for every corner k.

    rows, weights: [B, Q, M, K]; output_grad: [B, Q, M, C]. A scan over k keeps one
    [B, Q, M, C] update buffer alive instead of materialising all K of them
    ([B, Q, M, K, C]); on CPU writing that buffer costs more than the scatter.
    """
    channels = output_grad.shape[-1]

    def scatter_one_corner(grad, corner):
        corner_rows, corner_weights = corner
        updates = corner_weights[..., None] * output_grad
        grad = grad.at[corner_rows.reshape(-1)].add(updates.reshape(-1, channels), mode="promise_in_bounds")
        return grad, None

    corners = (jnp.moveaxis(rows, -1, 0), jnp.moveaxis(weights, -1, 0))
    table_grad, _ = jax.lax.scan(scatter_one_corner, table_grad, corners)
    return table_grad


def _backward(spatial_shapes, residuals, output_grad):
    value, locations_in, weights_in = residuals
    compute = accumulation_dtype(value, locations_in, weights_in)
    sampling_locations = locations_in.astype(compute)
    attention_weights = weights_in.astype(compute)
    batch, total_pixels, heads, channels = value.shape
    queries, points = sampling_locations.shape[1], sampling_locations.shape[4]
    rows_table = _value_rows(value)
    output_grad = output_grad.reshape(batch, queries, heads, channels).astype(compute)
    flat = lambda x: x.reshape(batch, queries, heads, points * 4)

    per_level = _all_level_corners(sampling_locations, attention_weights, spatial_shapes, total_pixels)
    rows = jnp.concatenate([flat(r) for r, _, _ in per_level], -1)  # [B, Q, M, L*P*4]
    bilinear = jnp.stack([c.weight for _, _, c in per_level])  # [L, B, Q, M, P, 4]
    d_dx = jnp.stack([c.d_weight_dx for _, _, c in per_level])
    d_dy = jnp.stack([c.d_weight_dy for _, _, c in per_level])
    level_rows = jnp.stack([r for r, _, _ in per_level])

    def level_grads(_, level):
        rows_l, bilinear_l, dx_l, dy_l = level
        # <dL/dout, corner value> for every corner of the level.
        dot = _gather_dot(rows_table, rows_l.reshape(batch, queries, heads, points * 4), output_grad)
        dot = dot.reshape(bilinear_l.shape)
        return None, (jnp.sum(dot * bilinear_l, -1), jnp.sum(dot * dx_l, -1), jnp.sum(dot * dy_l, -1))

    _, (weight_grad, grad_x, grad_y) = jax.lax.scan(level_grads, None, (level_rows, bilinear, d_dx, d_dy))
    weight_grad = jnp.moveaxis(weight_grad, 0, 3)  # [B, Q, M, L, P]
    attention = attention_weights[..., None]  # [B, Q, M, L, P, 1]
    location_grad = attention * jnp.stack([jnp.moveaxis(grad_x, 0, 3), jnp.moveaxis(grad_y, 0, 3)], axis=-1)

    weights = jnp.concatenate([flat(w) for _, w, _ in per_level], -1)
    value_grad = _scatter_add_rows(jnp.zeros(rows_table.shape, compute), rows, weights, output_grad)
    return (value_grad.reshape(value.shape).astype(value.dtype),
            location_grad.astype(locations_in.dtype),
            weight_grad.astype(weights_in.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _msda_xla(value, spatial_shapes, sampling_locations, attention_weights):
    return _forward(value, spatial_shapes, sampling_locations, attention_weights)


def _msda_xla_fwd(value, spatial_shapes, sampling_locations, attention_weights):
    output = _forward(value, spatial_shapes, sampling_locations, attention_weights)
    return output, (value, sampling_locations, attention_weights)


_msda_xla.defvjp(_msda_xla_fwd, _backward)


def multiscale_deformable_attention_xla(
    value: jax.Array,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: jax.Array,
    attention_weights: jax.Array,
) -> jax.Array:
    """XLA MSDA with a hand-written VJP.

    Args:
        value: [B, S, M, C], S = sum_l H_l * W_l (level-major, row-major).
        spatial_shapes: static ((H_0, W_0), ..., (H_{L-1}, W_{L-1})).
        sampling_locations: [B, Q, M, L, P, 2], (x, y) in [0, 1] map coordinates.
        attention_weights: [B, Q, M, L, P].

    Returns:
        [B, Q, M * C] in ``value.dtype``, accumulated in float32.
    """
    spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    value, sampling_locations, attention_weights = map(jnp.asarray, (value, sampling_locations, attention_weights))
    return _msda_xla(value, spatial_shapes, sampling_locations, attention_weights)
