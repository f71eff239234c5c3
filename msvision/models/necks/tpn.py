"""Trident Pyramid Network neck, TPN(L, B) (thesis chapter 3).

Architecture (thesis section 3.3, figures 3.2–3.4; exact order from the author's
code, DetSeg ``configs/gc/tpn_37_eeec_3b2_gn_v3.yaml`` run by
``models/cores/gc.py``). The initial pyramid comes from
:class:`msvision.models.necks.base.InitialPyramid` (thesis section 2.4: 1×1 lateral
projections of C3–C5 (and C2), P6 = 3×3 s2 conv on C5, P7 = 3×3 s2 conv on
ReLU(P6)). Then L TPN layers, each (levels l = lo..hi, e.g. P3–P7):

1. top-down pass, coarse to fine, sequential:
   ``P_l += upsample_bilinear(conv1x1(ReLU(GN(P_{l+1}))), size(P_l))``
   (the 1×1 projection runs at the coarse resolution, before the upsampling;
   bilinear with half-pixel centres = torch ``align_corners=False``); P_hi unchanged;
2. self-processing: B pre-activation bottlenecks on every level (P_hi included);
3. bottom-up pass, fine to coarse, sequential:
   ``P_l += bottleneck_branch_stride2(P_{l-1})``; P_lo unchanged;
4. self-processing again: B bottlenecks on every level (separate weights).

Per layer: (n−1) top-down ops, (n−1) bottom-up ops and 2·B·n bottlenecks for n
levels; no weights shared anywhere. No normalisation after the last layer.

Why a projection in the top-down residual (section 3.3.3): with a zero-mean random
linear projection the residual added to P_l has zero expectation at
initialisation, so correlated features of neighbouring levels do not pile up as
layers are stacked (averaging instead of adding would make the skip connection
non-free).

Odd sizes: a stride-2 3×3 convolution with padding 1 maps h to ceil(h/2), the same
rule the backbone and P6/P7 follow, so bottom-up deltas match the coarse maps; the
top-down resize maps the coarse map onto the finer map's exact shape — per image,
from its valid coarse map to its valid fine map, when ``image_sizes`` is given
(PyTorch ``F.interpolate(size=...)`` on the image alone; :mod:`msvision.ops.padding`).

Config (``config.model.neck``, name 'tpn'): the keyword arguments of :class:`TPN`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
from flax import nnx

from msvision.models.layers import Bottleneck, BottleneckBranch, PreActConv
from msvision.models.necks.base import InitialPyramid
from msvision.ops import padding

Array = jax.Array
Dtype = Any


class SelfProcessing(nnx.Module):
    """B consecutive pre-activation bottleneck layers on one feature map (thesis section 3.3.2).

    Separate weights for every layer (as the author's code); :class:`~msvision.models.layers.Bottleneck`.
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


class TopDown(nnx.Module):
    """TPN top-down operation (thesis figure 3.4, left).

    ``fine + resize_bilinear(conv1x1(ReLU(GN(coarse))), fine.shape)``;
    ``fine: [B, H, W, D]`` of stride ``stride``, ``coarse: [B, h, w, D]`` of stride
    ``2·stride`` → ``[B, H, W, D]``.
    """

    def __init__(self, channels: int = 256, *, num_groups: int = 8, dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        self.proj = PreActConv(channels, channels, 1, num_groups=num_groups, dtype=dtype, rngs=rngs)

    def __call__(self, fine: Array, coarse: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        h = self.proj(coarse, image_sizes, 2 * stride)
        h = padding.resize_between_strides(h, fine.shape[1:3], image_sizes, 2 * stride, stride, "bilinear")
        return fine + h.astype(fine.dtype)


class BottomUp(nnx.Module):
    """TPN bottom-up operation (thesis figure 3.4, right).

    ``coarse + bottleneck_branch_stride2(fine)``; ``fine: [B, H, W, D]`` of stride
    ``stride``, ``coarse: [B, ceil(H/2), ceil(W/2), D]`` → same shape as ``coarse``.
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
            channels, hidden_channels, stride=2, num_groups=num_groups, dtype=dtype, rngs=rngs
        )

    def __call__(self, coarse: Array, fine: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        delta = self.branch(fine, image_sizes, stride)
        if delta.shape != coarse.shape:
            raise ValueError(
                f"bottom-up delta {delta.shape} does not match the coarser map {coarse.shape}: "
                "pyramid levels must follow h_{l+1} = ceil(h_l / 2)"
            )
        return coarse + delta.astype(coarse.dtype)


def top_down_pass(ops: Sequence[TopDown], maps: list[Array], image_sizes: Optional[Array] = None,
                  first_level: int = 3) -> list[Array]:
    """Sequential top-down pass; ``maps`` fine→coarse from level ``first_level``,
    ``ops[i]`` updates ``maps[i]`` from ``maps[i+1]``."""
    maps = list(maps)
    for i in reversed(range(len(maps) - 1)):
        maps[i] = ops[i](maps[i], maps[i + 1], image_sizes, 2 ** (first_level + i))
    return maps


def bottom_up_pass(ops: Sequence[BottomUp], maps: list[Array], image_sizes: Optional[Array] = None,
                   first_level: int = 3) -> list[Array]:
    """Sequential bottom-up pass; ``ops[i]`` updates ``maps[i+1]`` from ``maps[i]``."""
    maps = list(maps)
    for i in range(len(maps) - 1):
        maps[i + 1] = ops[i](maps[i + 1], maps[i], image_sizes, 2 ** (first_level + i))
    return maps


def self_processing(ops: Sequence[SelfProcessing], maps: list[Array], image_sizes: Optional[Array] = None,
                    first_level: int = 3) -> list[Array]:
    """Parallel self-processing: ``ops[i]`` on ``maps[i]``."""
    return [op(x, image_sizes, 2 ** (first_level + i)) for i, (op, x) in enumerate(zip(ops, maps))]


class TPNLayer(nnx.Module):
    """One TPN layer: top-down, B bottlenecks, bottom-up, B bottlenecks (thesis fig. 3.2).

    Operates on a list of ``num_levels`` maps ordered fine→coarse, all ``[B, H_l, W_l, D]``.

    Attributes:
      top_down: ``num_levels − 1`` :class:`TopDown`; entry i updates level i from i+1.
      self_processing_1: ``num_levels`` :class:`SelfProcessing` (B bottlenecks each).
      bottom_up: ``num_levels − 1`` :class:`BottomUp`; entry i updates level i+1 from i.
      self_processing_2: ``num_levels`` :class:`SelfProcessing`.
    """

    def __init__(
        self,
        num_levels: int,
        num_bottlenecks: int,
        channels: int = 256,
        hidden_channels: int = 64,
        *,
        num_groups: int = 8,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        kw = dict(num_groups=num_groups, dtype=dtype, rngs=rngs)
        n = num_levels
        self.top_down = nnx.List([TopDown(channels, **kw) for _ in range(n - 1)])
        self.self_processing_1 = nnx.List(
            [SelfProcessing(num_bottlenecks, channels, hidden_channels, **kw) for _ in range(n)]
        )
        self.bottom_up = nnx.List([BottomUp(channels, hidden_channels, **kw) for _ in range(n - 1)])
        self.self_processing_2 = nnx.List(
            [SelfProcessing(num_bottlenecks, channels, hidden_channels, **kw) for _ in range(n)]
        )

    def __call__(self, maps: list[Array], image_sizes: Optional[Array] = None, first_level: int = 3) -> list[Array]:
        args = (image_sizes, first_level)
        maps = top_down_pass(self.top_down, maps, *args)
        maps = self_processing(self.self_processing_1, maps, *args)
        maps = bottom_up_pass(self.bottom_up, maps, *args)
        return self_processing(self.self_processing_2, maps, *args)


class TPN(nnx.Module):
    """TPN(L, B) neck: initial pyramid + L :class:`TPNLayer` (thesis chapter 3).

    ``neck(features, image_sizes=None)`` with ``features = {level: [B, H/2^l, W/2^l,
    C_l]}`` for ``in_levels`` returns ``{level: [B, H/2^l, W/2^l, channels]}`` for
    ``out_levels`` (sizes rounded up at every halving); ``image_sizes [B, 2]`` makes
    it padding-aware.

    Attributes:
      in_levels, out_levels, channels: the neck interface (docs/ARCHITECTURE.md).
      num_layers (L), num_bottlenecks (B).
      input_proj: :class:`~msvision.models.necks.base.InitialPyramid`.
      layers: L :class:`TPNLayer`.
    """

    def __init__(
        self,
        in_channels: dict[int, int],
        *,
        out_levels: Sequence[int] = (3, 4, 5, 6, 7),
        num_layers: int = 3,
        num_bottlenecks: int = 2,
        channels: int = 256,
        hidden_channels: int = 64,
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
        self.num_bottlenecks = num_bottlenecks
        self.input_proj = InitialPyramid(
            in_channels, self.out_levels, channels, extra_source=extra_source, p6_relu=p6_relu, dtype=dtype,
            rngs=rngs,
        )
        self.layers = nnx.List([
            TPNLayer(len(self.out_levels), num_bottlenecks, channels, hidden_channels,
                     num_groups=num_groups, dtype=dtype, rngs=rngs)
            for _ in range(num_layers)
        ])

    def __call__(self, features: dict[int, Array], image_sizes: Optional[Array] = None) -> dict[int, Array]:
        pyramid = self.input_proj(features, image_sizes)
        maps = [pyramid[level] for level in self.out_levels]
        for layer in self.layers:
            maps = layer(maps, image_sizes, self.out_levels[0])
        return dict(zip(self.out_levels, maps))
