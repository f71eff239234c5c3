"""Dense references for IdConv and the SFM (test oracles and benchmark baselines).

The SPS map is densified (``table[id_map]``, every passive duplicated over the cells it
covers) and convolved with ``lax.conv_general_dilated``; the outputs are read at the
active cells. Plain autodiff, no custom VJP: an independent path to the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax


def dense_map(features_table: jax.Array, id_map: jax.Array) -> jax.Array:
    """[R, S, S, F] = table[id_map] (passives duplicated, nearest-upsampled)."""
    return features_table[id_map]


def dense_conv3x3(dense: jax.Array, weight: jax.Array, bias: jax.Array, dilation: int) -> jax.Array:
    """3x3 conv (zero padding, 'same' size) of [R, S, S, F] with W [9·F, F_out] (taps (ky, kx) major)."""
    channels = dense.shape[-1]
    kernel = weight.reshape(3, 3, channels, -1)  # HWIO
    out = jax.lax.conv_general_dilated(
        dense, kernel.astype(dense.dtype), window_strides=(1, 1),
        padding=((dilation, dilation), (dilation, dilation)), rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    return out + bias.astype(out.dtype)


def id_conv_dense_reference(features_table, id_map, act_xy, act_roi, weight, bias, dilation: int):
    """IdConv by a dense convolution over every cell, read at the actives. [A, F_out]."""
    out = dense_conv3x3(dense_map(features_table, id_map), weight, bias, dilation)
    return out[act_roi, act_xy[:, 1], act_xy[:, 0]]


def sfm_dense_reference(features_table, id_map, act_xy, act_roi, weights, biases,
                        dilations: Sequence[int] = (1, 3, 5)):
    """Σ_d ReLU(dense conv_d) read at the actives. [A, F_out]."""
    dense = dense_map(features_table, id_map)
    total = 0.0
    for i, d in enumerate(dilations):
        total = total + jax.nn.relu(dense_conv3x3(dense, weights[i], biases[i], d))
    return total[act_roi, act_xy[:, 1], act_xy[:, 0]]
