"""Pre-activation bottleneck layer shared by the TPN, bFPN and hFPN necks.

Thesis section 3.3.2, figure 3.3: the base self-processing layer is the ResNet
bottleneck in its pre-activation form (He et al., "Identity mappings", thesis ref.
[26]): a skip connection around a residual branch of three convolutions
1×1 (D→H), 3×3 (H→H), 1×1 (H→D), *each preceded by* GroupNorm(8) and ReLU.
D = 256 feature size, H = 64 hidden size (section 3.4.1).

The bottom-up operation of TPN (figure 3.4, right) reuses the same residual branch
with the 3×3 convolution at stride 2 (:class:`BottleneckBranch` with ``stride=2``).

Initialisation follows the author's code (DetSeg ``models/cores/gc.py``): the convolutions
inside TPN layers use PyTorch's default ``Conv2d`` init (kaiming_uniform with
a=sqrt(5), bias U(±1/sqrt(fan_in))); no zero-init anywhere; GroupNorm eps 1e-5,
scale 1, shift 0.

All modules take and return NHWC arrays. Calls take the map's ``stride`` and
optional ``image_sizes [B, 2]`` (h, w inside the padding): GroupNorm statistics
and 3×3 convolutions then see each image's valid cells only
(:mod:`msvision.ops.padding`).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
from flax import nnx

from msvision.models.layers import Conv2d, GroupNorm, kaiming_uniform, torch_default_bias
from msvision.ops.padding import padding_mask

Array = jax.Array
Dtype = Any

GROUP_NORM_EPS = 1e-5  # torch.nn.GroupNorm default


def group_norm(num_features: int, num_groups: int, *, dtype: Optional[Dtype], rngs: nnx.Rngs) -> GroupNorm:
    """``torch.nn.GroupNorm(num_groups, num_features)`` on NHWC (stats over H, W and the group)."""
    return GroupNorm(num_features, num_groups, epsilon=GROUP_NORM_EPS, dtype=dtype, rngs=rngs)


def torch_default_conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    stride: int = 1,
    *,
    dtype: Optional[Dtype],
    rngs: nnx.Rngs,
) -> Conv2d:
    """A ``Conv2d`` with PyTorch's default init (the author's TPN layers set no init)."""
    fan_in = in_features * kernel_size * kernel_size
    return Conv2d(
        in_features, out_features, kernel_size, stride,
        kernel_init=kaiming_uniform(math.sqrt(5.0)), bias_init=torch_default_bias(fan_in),
        dtype=dtype, rngs=rngs,
    )


class PreActConv(nnx.Module):
    """GroupNorm → ReLU → Conv (the pink convolution node of thesis figures 3.3–3.4).

    ``x: [B, H, W, in_features]`` → ``[B, H', W', out_features]`` with
    ``H' = ceil(H / stride)`` (symmetric padding ``kernel_size // 2``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        stride: int = 1,
        *,
        num_groups: int = 8,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        self.stride = stride
        self.norm = group_norm(in_features, num_groups, dtype=dtype, rngs=rngs)
        self.conv = torch_default_conv(in_features, out_features, kernel_size, stride, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        """``x`` of stride ``stride`` (relative to the input image)."""
        mask = padding_mask(image_sizes, x.shape[1:3], stride)
        return self.conv(jax.nn.relu(self.norm(x, mask)), mask)


class BottleneckBranch(nnx.Module):
    """Residual branch of the bottleneck: 1×1 (D→H), 3×3 at ``stride`` (H→H), 1×1 (H→D).

    ``stride=1`` is the self-processing branch (figure 3.3), ``stride=2`` the TPN
    bottom-up branch (figure 3.4): ``[B, H, W, D]`` → ``[B, ceil(H/2), ceil(W/2), D]``.
    """

    def __init__(
        self,
        channels: int = 256,
        hidden_channels: int = 64,
        *,
        stride: int = 1,
        num_groups: int = 8,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        kw = dict(num_groups=num_groups, dtype=dtype, rngs=rngs)
        self.stride = stride
        self.reduce = PreActConv(channels, hidden_channels, 1, **kw)
        self.process = PreActConv(hidden_channels, hidden_channels, 3, stride, **kw)
        self.expand = PreActConv(hidden_channels, channels, 1, **kw)

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        """``x`` of stride ``stride``; the output has stride ``stride · self.stride``."""
        h = self.process(self.reduce(x, image_sizes, stride), image_sizes, stride)
        return self.expand(h, image_sizes, stride * self.stride)


class Bottleneck(nnx.Module):
    """Pre-activation bottleneck layer ``x + branch(x)`` (thesis figure 3.3).

    ``x: [B, H, W, D]`` → ``[B, H, W, D]``. The skip connection is computation free.
    """

    def __init__(
        self,
        channels: int = 256,
        hidden_channels: int = 64,
        *,
        num_groups: int = 8,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        self.branch = BottleneckBranch(
            channels, hidden_channels, stride=1, num_groups=num_groups, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        return x + self.branch(x, image_sizes, stride).astype(x.dtype)


class SelfProcessing(nnx.Module):
    """B consecutive bottleneck layers on one feature map (thesis section 3.3.2).

    Separate weights for every layer (as the author's code).
    """

    def __init__(
        self,
        num_bottlenecks: int,
        channels: int = 256,
        hidden_channels: int = 64,
        *,
        num_groups: int = 8,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        self.bottlenecks = nnx.List([
            Bottleneck(channels, hidden_channels, num_groups=num_groups, dtype=dtype, rngs=rngs)
            for _ in range(num_bottlenecks)
        ])

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        for bottleneck in self.bottlenecks:
            x = bottleneck(x, image_sizes, stride)
        return x
