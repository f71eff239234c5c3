"""BiFPN neck baseline of thesis table 3.1 (EfficientDet's BiFPN, GroupNorm + ReLU).

Thesis section 3.4.2: "the BiFPN neck from [EfficientDet] with batch normalization
layers replaced by group normalization layers, and with Swish-1 activation functions
replaced by ReLU activation functions. Multiple of these BiFPN layers are
concatenated". The neck follows the author's implementation (CedricPicron/DetSeg
``models/cores/bifpn.py``, moved unchanged to ``deprecated/bifpn.py`` in 2023) with
``norm_type='group'`` and ``separable_conv=True``. The 2021 command line defaulted to
regular 3×3 convs (``--bifpn_separable_conv`` was a flag), but only separable ones
give table 3.1's 34.7 M parameters (regular ones: 63.9 M at L = 7, and no L reproduces
34.7 M; ``configs/retinanet/r50_bifpn_L7.py``). The layer is EfficientDet's BiFPN
layer:

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
  code; EfficientDet uses max-pooling to go down): source index ``⌊i·in/out⌋``,
  so going down from an even size picks every other pixel.

So one layer on n levels has 2(n−1) separable-conv nodes (8 for P3–P7, 68 608
parameters each at D = 256) and 5(n−1) fusion weights. Convolutions use PyTorch's
default init (the author's code sets none).

Input stage (the author's ``BiFPN.in_projs``; it is the thesis's initial
pyramid of section 2.4, :class:`~msvision.models.necks.base.InitialPyramid`, with
the author's BiFPN details as defaults): 1×1 convs of C3–C5, P6 = conv3×3/2(C5)
entering the pyramid raw, P7 = conv3×3/2(ReLU(GN(P6))), all with PyTorch's
default init. An earlier version of this neck let P6 enter after a ReLU, gave P7 no GN
and used the detectron2 init of the TPN configs (``p6_relu=True, p7_norm=False,
input_init='c2_xavier'`` restores that).

Training speed (measured from scratch on the synthetic data,
``benchmarks/bifpn_ablation_synthetic.py``): a stack of four
of these layers reaches in 1200 steps the AP that FPN reaches in 600, and one layer is as
good as FPN; the fusion weights stay near uniform. Deep stacks (post-norm, no residuals)
optimise more slowly, so compare BiFPN with other necks at the thesis's schedule
(``benchmarks/RESULTS.md``, "Necks: small-scale replication of table 3.1").

Config (``config.model.neck``, name 'bifpn'): the keyword arguments of
:class:`BiFPN` (num_layers L: 7 in table 3.1).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.layers import Conv2d, group_norm, kaiming_uniform, torch_default_bias
from msvision.models.necks.base import InitialPyramid
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


class ConvNode(nnx.Module):
    """ReLU → 3×3 conv (no bias) → GroupNorm: ``[B, H, W, D]`` → same.

    The author's node with ``separable_conv=False`` (the 2021 command-line default);
    PyTorch default init.
    """

    def __init__(self, channels: int = 256, *, num_groups: int = 8, dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        self.conv = Conv2d(
            channels, channels, 3, use_bias=False, kernel_init=kaiming_uniform(math.sqrt(5.0)),
            dtype=dtype, rngs=rngs,
        )
        self.norm = group_norm(channels, num_groups, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        mask = padding_mask(image_sizes, x.shape[1:3], stride)
        return self.norm(self.conv(jax.nn.relu(x), mask), mask)


def fast_normalized_weights(raw: Array) -> Array:
    """EfficientDet fast normalised fusion: ``relu(w) / (Σ relu(w) + 1e-4)`` along the last axis."""
    w = jax.nn.relu(raw)
    return w / (jnp.sum(w, axis=-1, keepdims=True) + FUSION_EPS)


class BiFPNLayer(nnx.Module):
    """One BiFPN layer on ``num_levels`` maps ordered fine→coarse, all ``[B, H_l, W_l, D]``.

    ``separable_conv``: :class:`SeparableConvNode` nodes, else :class:`ConvNode`.

    Attributes:
      top_down: ``n − 1`` nodes; entry i produces the top-down map of level i.
      bottom_up: ``n − 1`` nodes; entry i produces the output of level i+1.
      top_down_weights: ``[n − 1, 2]`` raw fusion weights (input, upsampled).
      bottom_up_weights: ``[n − 1, 3]`` raw fusion weights (input, top-down, downsampled).
    """

    def __init__(self, num_levels: int, channels: int = 256, *, num_groups: int = 8, separable_conv: bool = True,
                 dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        n = num_levels
        kw = dict(num_groups=num_groups, dtype=dtype, rngs=rngs)
        node = SeparableConvNode if separable_conv else ConvNode
        self.top_down = nnx.List([node(channels, **kw) for _ in range(n - 1)])
        self.bottom_up = nnx.List([node(channels, **kw) for _ in range(n - 1)])
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
    """BiFPN(L) neck: input stage + L :class:`BiFPNLayer` (thesis table 3.1).

    Args:
      in_channels: ``{level: C_l}`` of the backbone features (C3–C5).
      out_levels: pyramid levels, fine to coarse (P3–P7).
      num_layers: L (7 in table 3.1).
      channels: D (256).
      num_groups: GroupNorm groups of the nodes and of the P7 path (8).
      extra_source: P6 from ``'input'`` (raw C5, the author's) or ``'lateral'`` (P5).
      p6_relu: P6 enters the pyramid after a ReLU. False: the author's BiFPN applies
        its in-place ReLU to GN(P6), so the pyramid keeps the raw P6.
      p7_norm: P7 = conv(ReLU(GN(P6))) (the author's ``[norm, act, conv]``);
        False: conv(ReLU(P6)) as detectron2's ``LastLevelP6P7``. The thesis's
        section 2.4 only says "a ReLU activation in between".
      input_init: ``'torch'``: PyTorch's default ``Conv2d`` init for the 1×1 and
        P6/P7 convs (the author's BiFPN sets none); ``'c2_xavier'``:
        ``kaiming_uniform_(a=1)`` and zero biases (the author's TPN/FPN inputs).
      separable_conv: nodes with a depthwise-separable 3×3 conv (table 3.1's
        parameter count); False: a regular 3×3 conv without bias
        (:class:`ConvNode`, the author's other option).
      dtype: compute dtype.

    Call: ``features = {level: [B, H/2^l, W/2^l, C_l]}``, optional ``image_sizes
    [B, 2]`` (h, w inside the padding: padding-aware) → ``{level: [B, H/2^l,
    W/2^l, D]}`` for ``out_levels``.
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
        p6_relu: bool = False,
        p7_norm: bool = True,
        input_init: str = "torch",
        separable_conv: bool = True,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        self.in_levels = tuple(sorted(in_channels))
        self.out_levels = tuple(sorted(out_levels))
        self.channels = channels
        self.num_layers = num_layers
        self.input_proj = InitialPyramid(
            in_channels, self.out_levels, channels, extra_source=extra_source, p6_relu=p6_relu,
            init=input_init, extra_norm_groups=num_groups if p7_norm else 0, dtype=dtype, rngs=rngs,
        )
        self.layers = nnx.List([
            BiFPNLayer(len(self.out_levels), channels, num_groups=num_groups, separable_conv=separable_conv,
                       dtype=dtype, rngs=rngs)
            for _ in range(num_layers)
        ])

    def __call__(self, features: dict[int, Array], image_sizes: Optional[Array] = None) -> dict[int, Array]:
        pyramid = self.input_proj(features, image_sizes)
        maps = [pyramid[level] for level in self.out_levels]
        for layer in self.layers:
            maps = layer(maps, image_sizes, self.out_levels[0])
        return dict(zip(self.out_levels, maps))
