"""Plain-autodiff multi-scale deformable attention: the documentation and test oracle.

This is the JAX transcription of Deformable DETR's ``ms_deform_attn_core_pytorch``
(Zhu et al., 2021, ``models/ops/functions/ms_deform_attn_func.py``): every level is
sampled with ``grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=False)`` and the samples are summed with the attention weights over
levels and points. It is written for clarity, differentiated by ``jax.grad``, and
materialises every corner sample; use :func:`msvision.ops.msda.multiscale_deformable_attention`
for real work.

Shapes (shared by every implementation in this package):
    value:               [B, S, M, C] with S = sum_l H_l * W_l, level-major and
                         row-major inside a level (the flattening of Deformable DETR).
    spatial_shapes:      static tuple of L pairs (H_l, W_l).
    sampling_locations:  [B, Q, M, L, P, 2], (x, y) normalised so that (0, 0) is the
                         top-left corner and (1, 1) the bottom-right corner of the map
                         (pixel centres at (i + 0.5) / W); values outside [0, 1] allowed.
    attention_weights:   [B, Q, M, L, P].
    returns:             [B, Q, M * C].
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def level_start_indices(spatial_shapes: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """Offsets of every level in the flattened value axis S (static Python ints)."""
    starts, total = [], 0
    for height, width in spatial_shapes:
        starts.append(total)
        total += height * width
    return tuple(starts)


def bilinear_sample_zeros(feature_map: jax.Array, grid_xy: jax.Array) -> jax.Array:
    """``grid_sample(bilinear, zeros, align_corners=False)`` on one map, by autodiff.

    Args:
        feature_map: [N, H, W, C].
        grid_xy: [N, K, 2], (x, y) in [0, 1]-normalised map coordinates.

    Returns:
        [N, K, C], the bilinear samples with zero padding outside the map.
    """
    _, height, width, _ = feature_map.shape
    # align_corners=False: normalised 0 is the left edge of pixel 0 and 1 the right
    # edge of pixel W-1, so pixel-centre coordinates are loc * W - 0.5.
    x = grid_xy[..., 0] * width - 0.5
    y = grid_xy[..., 1] * height - 0.5
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    fx, fy = x - x0, y - y0
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)

    def corner(yi, xi, weight):
        valid = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        yc = jnp.clip(yi, 0, height - 1)
        xc = jnp.clip(xi, 0, width - 1)
        samples = jax.vmap(lambda fm, r, c: fm[r, c])(feature_map, yc, xc)
        return samples * jnp.where(valid, weight, 0.0)[..., None]

    return (
        corner(y0, x0, (1 - fx) * (1 - fy))
        + corner(y0, x0 + 1, fx * (1 - fy))
        + corner(y0 + 1, x0, (1 - fx) * fy)
        + corner(y0 + 1, x0 + 1, fx * fy)
    )


def multiscale_deformable_attention_reference(
    value: jax.Array,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: jax.Array,
    attention_weights: jax.Array,
) -> jax.Array:
    """Reference MSDA (see the module docstring for shapes); computes in float32."""
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value = value.astype(jnp.float32)
    sampling_locations = sampling_locations.astype(jnp.float32)
    attention_weights = attention_weights.astype(jnp.float32)
    output = jnp.zeros((batch, heads, queries, channels), jnp.float32)
    for level, (start, (height, width)) in enumerate(
        zip(level_start_indices(spatial_shapes), spatial_shapes)
    ):
        # [B, H*W, M, C] -> [B*M, H, W, C]
        value_l = value[:, start : start + height * width]
        value_l = value_l.transpose(0, 2, 1, 3).reshape(batch * heads, height, width, channels)
        # [B, Q, M, P, 2] -> [B*M, Q*P, 2]
        grid_l = sampling_locations[:, :, :, level].transpose(0, 2, 1, 3, 4)
        grid_l = grid_l.reshape(batch * heads, queries * points, 2)
        samples = bilinear_sample_zeros(value_l, grid_l)  # [B*M, Q*P, C]
        samples = samples.reshape(batch, heads, queries, points, channels)
        weights_l = attention_weights[:, :, :, level].transpose(0, 2, 1, 3)  # [B, M, Q, P]
        output = output + jnp.einsum("bmqpc,bmqp->bmqc", samples, weights_l)
    return output.transpose(0, 2, 1, 3).reshape(batch, queries, heads * channels)
