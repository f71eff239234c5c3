"""Pallas (Triton backend) kernels for multi-scale deformable attention on GPUs.

All Triton-specific code of msvision's MSDA lives in this file: the Pallas Triton
backend is deprecated from jax 0.11, and a Mosaic GPU version should replace this
module behind ``multiscale_deformable_attention(..., impl=...)`` without touching
anything else. Semantics, shapes and coordinates: :mod:`msvision.ops.msda.reference`.

Kernels (block sizes are powers of two, as Triton requires):

- Forward, grid ``(ceil(Q / block_queries), B * M)``: one program per (block of
  queries, batch·head). For every level (static unroll) and point it loads the
  locations and attention weights of its queries, computes the four bilinear
  corners, does four masked ``[block_queries, C]`` row loads from the value and
  accumulates them in float32 registers; one store of ``[block_queries, C]``.
  Queries past Q (padding to the block) and channels past C are masked.
- Backward, grid ``(ceil(Q / block_queries), B * M)``: recomputes the
  sampling, gets the attention-weight and location gradients from the corner dot
  products ``<dL/dout, value[corner]>`` and the corner-weight derivatives, and
  adds ``weight * dL/dout`` into a float32 value gradient with
  ``pltriton.atomic_add``. the backward ``block_queries`` defaults to 1: Pallas's
  interpret mode discharges a vector ``atomic_add`` as gather + scatter-*set*, so
  two lanes hitting the same address lose one contribution (checked in
  ``tests/ops/test_msda_pallas.py``). With one query per program the lanes of an
  atomic are the C channels of one pixel, all distinct, so interpret mode tests the
  exact code that runs on the GPU (this is also the CUDA kernel's granularity).
  Larger blocks are correct on hardware (true atomics) but not checkable on CPU.

Memory traffic per query and head (fp32, L levels, P points, C channels) — the
forward reads 2·L·P floats of locations, L·P weights and 4·L·P·C value floats
(the corner rows, mostly cache hits for neighbouring points) and writes C floats.
The PyTorch reference (``grid_sample`` per level, then stack, multiply, sum) also
reads 4·L·P·C value floats but writes and re-reads the L·P·C samples three more
times (grid_sample output, stacked copy, weighted product): ~3·L·P·C extra floats.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from msvision.ops.msda.reference import level_start_indices
from msvision.ops.bilinear import bilinear_corner_list

SpatialShapes = tuple[tuple[int, int], ...]


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class _Geometry:
    """Static sizes shared by the forward and backward kernels."""

    def __init__(self, value_shape, locations_shape, spatial_shapes: SpatialShapes):
        self.batch, self.total_pixels, self.heads, self.channels = value_shape
        _, self.queries, _, self.levels, self.points, _ = locations_shape
        self.spatial_shapes = spatial_shapes
        self.level_starts = level_start_indices(spatial_shapes)
        self.channels_padded = _next_power_of_two(self.channels)


def _program_queries_and_head(geometry: _Geometry, block_queries: int):
    """Query indices [block] (clamped), their validity, batch index and head index."""
    query_block = pl.program_id(0)
    batch_head = pl.program_id(1)
    batch_index = batch_head // geometry.heads
    head = batch_head % geometry.heads
    queries = query_block * block_queries + jnp.arange(block_queries, dtype=jnp.int32)
    query_valid = queries < geometry.queries
    queries = jnp.minimum(queries, geometry.queries - 1)
    return queries, query_valid, batch_index, head


def _store_index(valid, index, size: int):
    """Masked lanes store to an out-of-range sentinel instead of a clamped index.

    On the GPU the store mask alone suffices. Pallas's interpret mode discharges a
    masked store as read-modify-*set*, so a masked lane aliasing a live address (as a
    clamped padding query would) could write back a stale value; an out-of-range
    index is dropped instead.
    """
    return jnp.where(valid, index, size)


def _point_index(geometry: _Geometry, batch_index, queries, head, level: int, point: int):
    """Flat index into attention_weights [B, Q, M, L, P] (locations: 2x it, +0 / +1)."""
    return (((batch_index * geometry.queries + queries) * geometry.heads + head)
            * geometry.levels + level) * geometry.points + point


def _corner_rows(geometry: _Geometry, batch_index, head, level: int, pixel_index):
    """Row in value viewed as [B * S * M, C]."""
    start = geometry.level_starts[level]
    return (batch_index * geometry.total_pixels + start + pixel_index) * geometry.heads + head


def _forward_kernel(value_ref, locations_ref, weights_ref, output_ref, *, geometry: _Geometry,
                    block_queries: int):
    queries, query_valid, batch_index, head = _program_queries_and_head(geometry, block_queries)
    channels = jnp.arange(geometry.channels_padded, dtype=jnp.int32)
    channel_valid = channels < geometry.channels

    accumulator = jnp.zeros((block_queries, geometry.channels_padded), jnp.float32)
    for level, (height, width) in enumerate(geometry.spatial_shapes):
        for point in range(geometry.points):
            index = _point_index(geometry, batch_index, queries, head, level, point)
            x = locations_ref[2 * index].astype(jnp.float32)
            y = locations_ref[2 * index + 1].astype(jnp.float32)
            attention = weights_ref[index].astype(jnp.float32)
            for corner in bilinear_corner_list(x, y, height, width):
                rows = _corner_rows(geometry, batch_index, head, level, corner.pixel_index)
                load_mask = (corner.inside & query_valid)[:, None] & channel_valid[None, :]
                corner_values = pltriton.load(
                    value_ref.at[rows[:, None], channels[None, :]], mask=load_mask, other=0.0)
                accumulator += (attention * corner.weight)[:, None] * corner_values.astype(jnp.float32)

    output_rows = (batch_index * geometry.queries + queries) * geometry.heads + head
    store_mask = query_valid[:, None] & channel_valid[None, :]
    output_rows = _store_index(query_valid, output_rows, output_ref.shape[0])
    pltriton.store(output_ref.at[output_rows[:, None], channels[None, :]],
                   accumulator.astype(output_ref.dtype), mask=store_mask)


def _backward_kernel(value_ref, locations_ref, weights_ref, output_grad_ref, value_grad_init_ref,
                     value_grad_ref, locations_grad_ref, weights_grad_ref, *, geometry: _Geometry,
                     block_queries: int, interpret: bool):
    del value_grad_init_ref  # aliased to value_grad_ref (zeros)
    queries, query_valid, batch_index, head = _program_queries_and_head(geometry, block_queries)
    channels = jnp.arange(geometry.channels_padded, dtype=jnp.int32)
    channel_valid = channels < geometry.channels
    output_rows = (batch_index * geometry.queries + queries) * geometry.heads + head
    lane_mask = query_valid[:, None] & channel_valid[None, :]
    output_grad = pltriton.load(output_grad_ref.at[output_rows[:, None], channels[None, :]],
                                mask=lane_mask, other=0.0).astype(jnp.float32)

    for level, (height, width) in enumerate(geometry.spatial_shapes):
        for point in range(geometry.points):
            index = _point_index(geometry, batch_index, queries, head, level, point)
            x = locations_ref[2 * index].astype(jnp.float32)
            y = locations_ref[2 * index + 1].astype(jnp.float32)
            attention = weights_ref[index].astype(jnp.float32)
            grad_attention = jnp.zeros((block_queries,), jnp.float32)
            grad_x = jnp.zeros((block_queries,), jnp.float32)
            grad_y = jnp.zeros((block_queries,), jnp.float32)
            for corner in bilinear_corner_list(x, y, height, width):
                rows = _corner_rows(geometry, batch_index, head, level, corner.pixel_index)
                corner_mask = corner.inside[:, None] & lane_mask
                corner_values = pltriton.load(
                    value_ref.at[rows[:, None], channels[None, :]], mask=corner_mask, other=0.0)
                grad_dot_value = jnp.sum(output_grad * corner_values.astype(jnp.float32), axis=1)
                grad_attention += corner.weight * grad_dot_value
                grad_x += corner.d_weight_dx * grad_dot_value
                grad_y += corner.d_weight_dy * grad_dot_value
                contribution = (attention * corner.weight)[:, None] * output_grad
                # Interpret mode cannot discharge a masked atomic; the unmasked form is
                # equivalent here (indices are clamped in range, masked lanes add 0).
                pltriton.atomic_add(value_grad_ref, (rows[:, None], channels[None, :]),
                                    jnp.where(corner_mask, contribution, 0.0),
                                    mask=None if interpret else corner_mask)
            weight_out = _store_index(query_valid, index, weights_grad_ref.shape[0])
            x_out = _store_index(query_valid, 2 * index, locations_grad_ref.shape[0])
            y_out = _store_index(query_valid, 2 * index + 1, locations_grad_ref.shape[0])
            pltriton.store(weights_grad_ref.at[weight_out], grad_attention, mask=query_valid)
            pltriton.store(locations_grad_ref.at[x_out], attention * grad_x, mask=query_valid)
            pltriton.store(locations_grad_ref.at[y_out], attention * grad_y, mask=query_valid)


def _compiler_params(num_warps: int, num_stages: int):
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def msda_forward_pallas(value, spatial_shapes: SpatialShapes, sampling_locations, attention_weights, *,
                        block_queries: int = 64, num_warps: int = 4, num_stages: int = 1,
                        interpret: bool = False):
    """Forward kernel call. Shapes as :func:`multiscale_deformable_attention`."""
    geometry = _Geometry(value.shape, sampling_locations.shape, spatial_shapes)
    block_queries = min(_next_power_of_two(block_queries), _next_power_of_two(geometry.queries))
    grid = (pl.cdiv(geometry.queries, block_queries), geometry.batch * geometry.heads)
    kernel = functools.partial(_forward_kernel, geometry=geometry, block_queries=block_queries)
    output = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((geometry.batch * geometry.queries * geometry.heads, geometry.channels),
                                       value.dtype),
        grid=grid,
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="msda_forward",
    )(value.reshape(-1, geometry.channels), sampling_locations.reshape(-1), attention_weights.reshape(-1))
    return output.reshape(geometry.batch, geometry.queries, geometry.heads * geometry.channels)


def msda_backward_pallas(value, spatial_shapes: SpatialShapes, sampling_locations, attention_weights,
                         output_grad, *, block_queries: int = 1, num_warps: int = 1, num_stages: int = 1,
                         interpret: bool = False):
    """Backward kernel call -> (value_grad fp32, locations_grad fp32, weights_grad fp32)."""
    geometry = _Geometry(value.shape, sampling_locations.shape, spatial_shapes)
    block_queries = min(_next_power_of_two(block_queries), _next_power_of_two(geometry.queries))
    grid = (pl.cdiv(geometry.queries, block_queries), geometry.batch * geometry.heads)
    kernel = functools.partial(_backward_kernel, geometry=geometry, block_queries=block_queries,
                               interpret=interpret)
    value_rows = value.reshape(-1, geometry.channels)
    value_grad, locations_grad, weights_grad = pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct(value_rows.shape, jnp.float32),  # atomics need fp32
            jax.ShapeDtypeStruct((sampling_locations.size,), jnp.float32),
            jax.ShapeDtypeStruct((attention_weights.size,), jnp.float32),
        ),
        grid=grid,
        input_output_aliases={4: 0},
        compiler_params=_compiler_params(num_warps, num_stages),
        interpret=interpret,
        name="msda_backward",
    )(value_rows, sampling_locations.reshape(-1), attention_weights.reshape(-1),
      output_grad.reshape(-1, geometry.channels), jnp.zeros(value_rows.shape, jnp.float32))
    return (value_grad.reshape(value.shape), locations_grad.reshape(sampling_locations.shape),
            weights_grad.reshape(attention_weights.shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 4))
def _msda_triton(value, spatial_shapes, sampling_locations, attention_weights, interpret):
    return msda_forward_pallas(value, spatial_shapes, sampling_locations, attention_weights,
                               interpret=interpret)


def _msda_triton_fwd(value, spatial_shapes, sampling_locations, attention_weights, interpret):
    output = msda_forward_pallas(value, spatial_shapes, sampling_locations, attention_weights,
                                 interpret=interpret)
    return output, (value, sampling_locations, attention_weights)


def _msda_triton_bwd(spatial_shapes, interpret, residuals, output_grad):
    value, sampling_locations, attention_weights = residuals
    value_grad, locations_grad, weights_grad = msda_backward_pallas(
        value, spatial_shapes, sampling_locations, attention_weights, output_grad, interpret=interpret)
    return (value_grad.astype(value.dtype), locations_grad.astype(sampling_locations.dtype),
            weights_grad.astype(attention_weights.dtype))


_msda_triton.defvjp(_msda_triton_fwd, _msda_triton_bwd)


def multiscale_deformable_attention_triton(value, spatial_shapes, sampling_locations, attention_weights, *,
                                           interpret: bool = False):
    """Pallas Triton MSDA with the same ``custom_vjp`` contract as the XLA version.

    Shapes as :func:`msvision.ops.msda.multiscale_deformable_attention`; output in
    ``value.dtype``, float32 accumulation. ``interpret=True`` runs the kernels with
    Pallas's interpreter (CPU tests).
    """
    spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    value, sampling_locations, attention_weights = map(jnp.asarray, (value, sampling_locations, attention_weights))
    return _msda_triton(value, spatial_shapes, sampling_locations, attention_weights, bool(interpret))
