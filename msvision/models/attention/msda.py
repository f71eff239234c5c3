"""Multi-scale deformable attention layer (Deformable DETR's ``MSDeformAttn``).

Used as self-attention of the DefEncoder neck (thesis section 4.5.1, reference
points) and as cross-attention of the FQDet/FQDetV2 decoders (thesis chapter 4,
box priors). Two ways of turning predicted offsets into sampling locations:

- ``reference_mode="points"`` (Deformable DETR): reference points [B, Q, 2] or
  [B, Q, L, 2], (x, y) in [0, 1] of the padded map; an offset of 1 moves by one
  pixel of the sampled level: ``loc = ref + offset / (W_l, H_l)``.
- ``reference_mode="boxes"`` (FQDet, thesis chapter 4: "sampling offsets are
  expressed in the prior box frame, origin at the box centre, unit = half
  width/height"): reference boxes [B, Q, 4] or [B, Q, L, 4], normalised
  (cx, cy, w, h); ``loc = (cx, cy) + offset * 0.5 * (w, h) / P`` as in the author's
  ``MSDAv1`` (DetSeg ``models/modules/attention.py``), so the initial offsets of point
  index P put the outermost points on the box border.

Initialisation as Deformable DETR (``MSDeformAttn._reset_parameters``): zero offset
kernel, offset bias pointing on a per-head direction (cos, sin)(2·pi·m/M) scaled
onto the unit square and multiplied by the point index 1..P; zero attention-weight
kernel and bias (uniform weights after the softmax over L·P); xavier-uniform value
and output projections with zero biases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.ops.msda import multiscale_deformable_attention

REFERENCE_MODES = ("points", "boxes")


def sampling_offset_bias_init(num_heads: int, num_levels: int, num_points: int):
    """Deformable DETR's offset bias: head m points along (cos, sin)(2·pi·m/M), scaled
    so that max(|x|, |y|) = 1 (a square), times the point index (1..P).

    Returns an initializer producing a [M * L * P * 2] bias laid out as (M, L, P, xy).
    """

    def init(key, shape, dtype=jnp.float32):
        del key
        thetas = jnp.arange(num_heads, dtype=jnp.float32) * (2.0 * math.pi / num_heads)
        directions = jnp.stack([jnp.cos(thetas), jnp.sin(thetas)], axis=-1)  # [M, 2]
        directions = directions / jnp.max(jnp.abs(directions), axis=-1, keepdims=True)
        point_scale = jnp.arange(1, num_points + 1, dtype=jnp.float32)  # [P]
        bias = directions[:, None, None, :] * point_scale[None, None, :, None]  # [M, 1, P, 2]
        bias = jnp.broadcast_to(bias, (num_heads, num_levels, num_points, 2))
        return bias.reshape(shape).astype(dtype)

    return init


def point_sampling_locations(reference_points: jax.Array, offsets: jax.Array,
                             spatial_shapes: Sequence[tuple[int, int]]) -> jax.Array:
    """Deformable DETR: offsets in pixels of each level around reference points.

    Args:
        reference_points: [B, Q, 2] or [B, Q, L, 2], (x, y) in [0, 1].
        offsets: [B, Q, M, L, P, 2] in pixels of level l.
    Returns:
        [B, Q, M, L, P, 2] normalised locations.
    """
    if reference_points.ndim == 3:
        reference_points = reference_points[:, :, None, :]
    size_xy = jnp.asarray([[w, h] for h, w in spatial_shapes], jnp.float32)  # [L, 2]
    return reference_points[:, :, None, :, None, :] + offsets / size_xy[None, None, None, :, None, :]


def box_sampling_locations(reference_boxes: jax.Array, offsets: jax.Array) -> jax.Array:
    """FQDet: offsets in the prior-box frame (origin the centre, unit half w/h, per point).

    Args:
        reference_boxes: [B, Q, 4] or [B, Q, L, 4], normalised (cx, cy, w, h).
        offsets: [B, Q, M, L, P, 2].
    Returns:
        [B, Q, M, L, P, 2]: ``(cx, cy) + offset * 0.5 * (w, h) / P``.
    """
    if reference_boxes.ndim == 3:
        reference_boxes = reference_boxes[:, :, None, :]
    num_points = offsets.shape[-2]
    centre = reference_boxes[:, :, None, :, None, :2]
    half_size_per_point = reference_boxes[:, :, None, :, None, 2:] * (0.5 / num_points)
    return centre + offsets * half_size_per_point


class MultiScaleDeformableAttention(nnx.Module):
    """MSDA attention layer (value, offset and weight projections, MSDA op, output).

    Args:
        embed_dim: D, feature size of queries, values and output.
        num_heads: M (D must be divisible by M).
        num_levels: L.
        num_points: P, sampling points per head and level.
        reference_mode: "points" (DefEncoder) or "boxes" (FQDet), see the module doc.
        dtype: compute dtype of the projections (e.g. bfloat16); the MSDA op itself
            accumulates in float32 and returns this dtype.
        param_dtype: parameter storage dtype.
        impl: MSDA implementation (see :func:`multiscale_deformable_attention`).
        rngs: ``nnx.Rngs`` with a ``params`` stream.

    The offset projection is the attribute ``sampling_offsets``: the optimizer gives
    parameters whose path contains it their own learning rate (thesis section 2.4).
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 5, num_points: int = 4,
                 *, reference_mode: str = "points", dtype: Any = None, param_dtype: Any = jnp.float32,
                 impl: str = "auto", rngs: nnx.Rngs):
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if reference_mode not in REFERENCE_MODES:
            raise ValueError(f"reference_mode must be one of {REFERENCE_MODES}, got {reference_mode!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.reference_mode = reference_mode
        self.dtype = dtype
        self.impl = impl
        xavier = nnx.initializers.xavier_uniform()
        zeros = nnx.initializers.zeros_init()
        linear = lambda out, kernel_init, bias_init: nnx.Linear(
            embed_dim, out, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs)
        self.sampling_offsets = linear(num_heads * num_levels * num_points * 2, zeros,
                                       sampling_offset_bias_init(num_heads, num_levels, num_points))
        self.attention_weights = linear(num_heads * num_levels * num_points, zeros, zeros)
        self.value_proj = linear(embed_dim, xavier, zeros)
        self.output_proj = linear(embed_dim, xavier, zeros)

    def sampling_locations_and_weights(self, query: jax.Array, reference: jax.Array,
                                       spatial_shapes: Sequence[tuple[int, int]]):
        """Sampling locations [B, Q, M, L, P, 2] and attention weights [B, Q, M, L, P] (fp32)."""
        batch, queries, _ = query.shape
        shape = (batch, queries, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).astype(jnp.float32).reshape(*shape, 2)
        logits = self.attention_weights(query).astype(jnp.float32)
        logits = logits.reshape(batch, queries, self.num_heads, self.num_levels * self.num_points)
        weights = jax.nn.softmax(logits, axis=-1).reshape(shape)  # softmax over levels x points
        reference = reference.astype(jnp.float32)
        if self.reference_mode == "points":
            locations = point_sampling_locations(reference, offsets, spatial_shapes)
        else:
            locations = box_sampling_locations(reference, offsets)
        return locations, weights

    def __call__(self, query: jax.Array, value_input: jax.Array, spatial_shapes: Sequence[tuple[int, int]],
                 reference: jax.Array, value_padding_mask: jax.Array | None = None) -> jax.Array:
        """Attend from every query to its sampling points on all levels.

        Args:
            query: [B, Q, D] (FQDet adds the box encoding before calling).
            value_input: [B, S, D], the pyramid flattened level-major, row-major,
                S = sum_l H_l * W_l.
            spatial_shapes: static ((H_0, W_0), ...) of the L levels.
            reference: [B, Q, 2] / [B, Q, L, 2] points or [B, Q, 4] / [B, Q, L, 4]
                boxes (normalised cxcywh), following ``reference_mode``.
            value_padding_mask: optional [B, S] bool, True at padded positions; those
                values are set to zero (Deformable DETR's ``masked_fill``).

        Returns:
            [B, Q, D].
        """
        spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
        if len(spatial_shapes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels, got spatial_shapes {spatial_shapes}")
        batch, total_pixels, _ = value_input.shape
        value = self.value_proj(value_input)
        if value_padding_mask is not None:
            value = jnp.where(value_padding_mask[..., None], jnp.zeros((), value.dtype), value)
        value = value.reshape(batch, total_pixels, self.num_heads, self.embed_dim // self.num_heads)
        locations, weights = self.sampling_locations_and_weights(query, reference, spatial_shapes)
        sampled = multiscale_deformable_attention(value, spatial_shapes, locations, weights, impl=self.impl)
        return self.output_proj(sampled)
