"""BiFPN neck baseline of thesis table 3.1 (EfficientDet's BiFPN, GroupNorm + ReLU).

Thesis section 3.4.2: "the BiFPN neck from [EfficientDet] with batch normalization
layers replaced by group normalization layers, and with Swish-1 activation
functions replaced by ReLU activation functions. Multiple of these BiFPN layers are
concatenated". The layer follows the author's implementation
(CedricPicron/DetSeg ``models/cores/bifpn.py``, ``norm_type='group'``,
``separable_conv=True``), which is EfficientDet's BiFPN layer:

* fast normalised fusion (EfficientDet eq. 3): ``w = ReLU(w_raw)``,
  ``out = Σ_i w_i·in_i / (Σ_i w_i + 1e-4)``, raw weights initialised to 1;
* every fusion node is followed by ReLU → depthwise 3×3 conv (with bias) →
  pointwise 1×1 conv (no bias) → GroupNorm(8) (EfficientDet's act → separable conv
  → norm order, with BN→GN and Swish→ReLU);
* top-down nodes, coarse to fine (levels lo..hi−1):
  ``td_l = node(w0·P_l + w1·nearest_up(td_{l+1}))`` with ``td_hi = P_hi``;
* bottom-up nodes, fine to coarse (levels lo+1..hi):
  ``out_l = node(w0·P_l + w1·td_l + w2·nearest_down(out_{l-1}))`` with
  ``out_lo = td_lo``. For the top level ``td_hi = P_hi``, so (as in the author's
  code, which keeps a 3-weight node there) the top node fuses P_hi twice; the
  EfficientDet paper's top node has two inputs — the difference is one scalar
  weight per layer.
* resampling: nearest-neighbour ``F.interpolate(size=...)`` both ways (the author's
  code; EfficientDet uses max-pooling to go down). Nearest "down-sampling" to
  ``ceil(h/2)`` picks every other pixel.

So one layer on n levels has 2(n−1) separable-conv nodes (8 for P3–P7, 68 608
parameters each at D = 256) and 5(n−1) fusion weights. Convolutions use PyTorch's
default init (the author's code sets none). The initial pyramid is the standard
one shared by all table 3.1 necks (:class:`~msvision.models.necks.base.InitialPyramid`,
thesis section 2.4).

Config (``config.model.neck``, name 'bifpn'): the keyword arguments of
:class:`BiFPN` (num_layers L: 7 in table 3.1).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.layers import Conv2d, kaiming_uniform, torch_default_bias
from msvision.models.necks.base import InitialPyramid
from msvision.models.necks.bottleneck import group_norm
from msvision.ops.padding import apply_mask, padding_mask, resize_between_strides

Array = jax.Array
Dtype = Any

FUSION_EPS = 1e-4


class DepthwiseConv2d(nnx.Module):
    """``nn.Conv2d(C, C, k, padding=k//2, groups=C)`` on NHWC; kernel ``[k, k, 1, C]``.

    PyTorch default init (fan_in = k·k for a depthwise kernel).
    """

    def __init__(self, channels: int, kernel_size: int = 3, *, dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        fan_in = kernel_size * kernel_size
        self.channels = channels
        self.padding = kernel_size // 2
        self.dtype = dtype
        init = kaiming_uniform(math.sqrt(5.0))
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, 1, channels), jnp.float32))
        self.bias = nnx.Param(torch_default_bias(fan_in)(rngs.params(), (channels,), jnp.float32))

    def __call__(self, x: Array, mask: Optional[Array] = None) -> Array:
        """``x: [B, H, W, C]``; ``mask [B, H, W, 1]``: valid cells (zeros elsewhere are read)."""
        dtype = self.dtype or x.dtype
        p = self.padding
        y = jax.lax.conv_general_dilated(
            apply_mask(x.astype(dtype), mask), self.kernel[...].astype(dtype),
            window_strides=(1, 1), padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.channels,
        )
        return y + self.bias[...].astype(dtype)


class SeparableConvNode(nnx.Module):
    """ReLU → depthwise 3×3 → pointwise 1×1 (no bias) → GroupNorm: ``[B, H, W, D]`` → same."""

    def __init__(self, channels: int = 256, *, num_groups: int = 8, dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        self.depthwise = DepthwiseConv2d(channels, 3, dtype=dtype, rngs=rngs)
        self.pointwise = Conv2d(
            channels, channels, 1, use_bias=False, kernel_init=kaiming_uniform(math.sqrt(5.0)),
            dtype=dtype, rngs=rngs,
        )
        self.norm = group_norm(channels, num_groups, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        mask = padding_mask(image_sizes, x.shape[1:3], stride)
        return self.norm(self.pointwise(self.depthwise(jax.nn.relu(x), mask)), mask)


def fast_normalized_weights(raw: Array) -> Array:
    """EfficientDet fast normalised fusion: ``relu(w) / (Σ relu(w) + 1e-4)`` along the last axis."""
    w = jax.nn.relu(raw)
    return w / (jnp.sum(w, axis=-1, keepdims=True) + FUSION_EPS)


class BiFPNLayer(nnx.Module):
    """One BiFPN layer on ``num_levels`` maps ordered fine→coarse, all ``[B, H_l, W_l, D]``.

    Attributes:
      top_down: ``n − 1`` nodes; entry i produces the top-down map of level i.
      bottom_up: ``n − 1`` nodes; entry i produces the output of level i+1.
      top_down_weights: ``[n − 1, 2]`` raw fusion weights (input, upsampled).
      bottom_up_weights: ``[n − 1, 3]`` raw fusion weights (input, top-down, downsampled).
    """

    def __init__(self, num_levels: int, channels: int = 256, *, num_groups: int = 8,
                 dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        n = num_levels
        kw = dict(num_groups=num_groups, dtype=dtype, rngs=rngs)
        self.top_down = nnx.List([SeparableConvNode(channels, **kw) for _ in range(n - 1)])
        self.bottom_up = nnx.List([SeparableConvNode(channels, **kw) for _ in range(n - 1)])
        self.top_down_weights = nnx.Param(jnp.ones((n - 1, 2), jnp.float32))
        self.bottom_up_weights = nnx.Param(jnp.ones((n - 1, 3), jnp.float32))

    def __call__(self, maps: list[Array], image_sizes: Optional[Array] = None, first_level: int = 3) -> list[Array]:
        """``maps`` fine→coarse from level ``first_level``; ``image_sizes [B, 2]``
        makes it padding-aware (resizing maps each image's valid cells)."""
        n = len(maps)
        td_w = fast_normalized_weights(self.top_down_weights[...])
        bu_w = fast_normalized_weights(self.bottom_up_weights[...])
        stride = [2 ** (first_level + i) for i in range(n)]

        td = [None] * n
        td[n - 1] = maps[n - 1]
        for i in reversed(range(n - 1)):
            up = resize_between_strides(td[i + 1], maps[i].shape[1:3], image_sizes, stride[i + 1], stride[i], "nearest")
            fused = td_w[i, 0].astype(maps[i].dtype) * maps[i] + td_w[i, 1].astype(up.dtype) * up
            td[i] = self.top_down[i](fused, image_sizes, stride[i]).astype(maps[i].dtype)

        out = [td[0]]
        for i in range(n - 1):
            down = resize_between_strides(out[i], maps[i + 1].shape[1:3], image_sizes, stride[i], stride[i + 1],
                                          "nearest")
            w = bu_w[i].astype(maps[i + 1].dtype)
            fused = w[0] * maps[i + 1] + w[1] * td[i + 1] + w[2] * down
            out.append(self.bottom_up[i](fused, image_sizes, stride[i + 1]).astype(maps[i + 1].dtype))
        return out


class BiFPN(nnx.Module):
    """BiFPN(L) neck: initial pyramid + L :class:`BiFPNLayer` (thesis table 3.1).

    ``features = {level: [B, H/2^l, W/2^l, C_l]}`` → ``{level: [B, H/2^l, W/2^l, D]}``
    for ``out_levels``.
    """

    def __init__(
        self,
        in_channels: dict[int, int],
        *,
        out_levels: Sequence[int] = (3, 4, 5, 6, 7),
        num_layers: int = 7,
        channels: int = 256,
        num_groups: int = 8,
        extra_source: str = "input",
        p6_relu: bool = True,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        self.in_levels = tuple(sorted(in_channels))
        self.out_levels = tuple(sorted(out_levels))
        self.channels = channels
        self.num_layers = num_layers
        self.input_proj = InitialPyramid(
            in_channels, self.out_levels, channels, extra_source=extra_source, p6_relu=p6_relu, dtype=dtype,
            rngs=rngs,
        )
        self.layers = nnx.List([
            BiFPNLayer(len(self.out_levels), channels, num_groups=num_groups, dtype=dtype, rngs=rngs)
            for _ in range(num_layers)
        ])

    def __call__(self, features: dict[int, Array], image_sizes: Optional[Array] = None) -> dict[int, Array]:
        pyramid = self.input_proj(features, image_sizes)
        maps = [pyramid[level] for level in self.out_levels]
        for layer in self.layers:
            maps = layer(maps, image_sizes, self.out_levels[0])
        return dict(zip(self.out_levels, maps))
