"""bFPN and hFPN baselines of thesis table 3.1 (figure 3.5).

Both spend TPN(L, B)'s self-processing budget, B·L bottleneck layers per level,
around a single FPN layer instead of interleaving it with communication:

* **bFPN** ("heavier backbone"): B·L bottlenecks on every level, then one FPN layer;
* **hFPN** ("heavier head"): one FPN layer, then B·L bottlenecks on every level.

The FPN layer is the TPN top-down pass (:class:`~msvision.models.necks.tpn.TopDown`:
``P_l += upsample_bilinear(conv1x1(ReLU(GN(P_{l+1}))))``, coarse to fine, P_hi
unchanged), as in the author's configs ``configs/gc/bpn_37_bb14_gn.yaml`` and
``bpn_37_hb14_gn.yaml`` (DetSeg) — i.e. not MMDetection's FPN with 3×3 output
convolutions. With that layer the parameter count matches table 3.1 (36.1 M with
R50 and RetinaNet C=1); 3×3 output convs would add 1.8 M.
The bottlenecks are the pre-activation bottlenecks of
:class:`msvision.models.layers.Bottleneck`, separate weights everywhere; the initial
pyramid is the standard one (:class:`msvision.models.necks.base.InitialPyramid`).

Config (``config.model.neck``): name 'bfpn' (``bottlenecks_first=True``) or
'hfpn' (False), and the other keyword arguments of :class:`BottleneckFPN`:
num_layers (L) and num_bottlenecks (B) give B·L bottlenecks per level (table
3.1: L=1, B=14).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
from flax import nnx

from msvision.models.necks.base import InitialPyramid
from msvision.models.necks.tpn import SelfProcessing, TopDown, self_processing, top_down_pass

Array = jax.Array
Dtype = Any


class BottleneckFPN(nnx.Module):
    """bFPN (``bottlenecks_first=True``) or hFPN (``False``) neck.

    ``features = {level: [B, H/2^l, W/2^l, C_l]}`` → ``{level: [B, H/2^l, W/2^l, D]}``
    for ``out_levels``.

    Attributes:
      in_levels, out_levels, channels: the neck interface.
      input_proj: the standard initial pyramid.
      self_processing: one :class:`SelfProcessing` of B·L bottlenecks per level.
      top_down: ``num_levels − 1`` :class:`TopDown` (the FPN layer).
    """

    def __init__(
        self,
        in_channels: dict[int, int],
        *,
        bottlenecks_first: bool,
        out_levels: Sequence[int] = (3, 4, 5, 6, 7),
        num_layers: int = 1,
        num_bottlenecks: int = 14,
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
        self.bottlenecks_first = bottlenecks_first
        self.num_bottlenecks_per_level = num_layers * num_bottlenecks
        n = len(self.out_levels)
        kw = dict(num_groups=num_groups, dtype=dtype, rngs=rngs)
        self.input_proj = InitialPyramid(
            in_channels, self.out_levels, channels, extra_source=extra_source, p6_relu=p6_relu, dtype=dtype,
            rngs=rngs,
        )
        self.self_processing = nnx.List([
            SelfProcessing(self.num_bottlenecks_per_level, channels, hidden_channels, **kw) for _ in range(n)
        ])
        self.top_down = nnx.List([TopDown(channels, **kw) for _ in range(n - 1)])

    def __call__(self, features: dict[int, Array], image_sizes: Optional[Array] = None) -> dict[int, Array]:
        pyramid = self.input_proj(features, image_sizes)
        maps = [pyramid[level] for level in self.out_levels]
        args = (image_sizes, self.out_levels[0])
        if self.bottlenecks_first:
            maps = top_down_pass(self.top_down, self_processing(self.self_processing, maps, *args), *args)
        else:
            maps = self_processing(self.self_processing, top_down_pass(self.top_down, maps, *args), *args)
        return dict(zip(self.out_levels, maps))

