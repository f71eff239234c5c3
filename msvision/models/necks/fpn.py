"""Feature Pyramid Network (Lin et al. 2017), MMDetection/detectron2 style.

Thesis section 3.2/3.4: the FPN baseline is MMDetection's FPN with extra convs on
the lateral P5 and a ReLU before the extra convs (author's ``fpn_v3``:
``add_extra_convs='on_lateral', relu_before_extra_convs=True``).

Structure, on :class:`~msvision.models.necks.base.InitialPyramid`:
  1. laterals: 1×1 conv of C_l (l in in_levels) → D channels;
  2. extra levels (P6, P7) from the initial pyramid: ``variant='mmdet'`` → P6 =
     conv3×3/2(lateral P5) (mmdet ``on_lateral``; with ``relu_before_extra_convs``
     mmdet applies the ReLU only before the *second* extra conv, P7 =
     conv3×3/2(ReLU(P6)), which is what we do); ``variant='retinanet'`` → P6 =
     conv3×3/2(C5), P7 = conv3×3/2(ReLU(P6)) (detectron2 RetinaNet,
     ``LastLevelP6P7`` on ``res5``);
  3. top-down: from the top backbone level down, lateral_l += nearest-upsample(
     lateral_{l+1}) to lateral_l's size (``F.interpolate(size=...)``, so odd sizes
     work);
  4. outputs: 3×3 conv on every backbone level; extra levels are output as is.

Init: ``kaiming_uniform_(a=1)``, zero bias (detectron2 ``c2_xavier_fill``, the
author's projections); mmdet uses Xavier-uniform, a minor difference.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
from flax import nnx

from msvision.models.layers import Conv2d, kaiming_uniform
from msvision.models.necks.base import InitialPyramid
from msvision.ops.padding import padding_mask, resize_between_strides

Array = jax.Array

FPN_VARIANTS = {"mmdet": "lateral", "retinanet": "input"}


class FPN(nnx.Module):
    """FPN neck.

    Args:
      in_channels: ``{level: C_l}`` of the backbone features (e.g. ``{3: 512, 4: 1024,
        5: 2048}``; add ``2: 256`` for P2).
      out_levels: e.g. ``(3, 4, 5, 6, 7)`` or ``(2, 3, 4, 5, 6, 7)``.
      channels: D (256).
      variant: ``'mmdet'`` (extra convs on lateral P5) or ``'retinanet'`` (on C5).

    Call: ``{level: [B, H_l, W_l, C_l]}``, optional ``image_sizes [B, 2]`` (h, w
    inside the padding: padding-aware) → ``{level: [B, H_l, W_l, D]}``.
    """

    def __init__(
        self,
        in_channels: Mapping[int, int],
        out_levels: Sequence[int] = (3, 4, 5, 6, 7),
        channels: int = 256,
        *,
        variant: str = "mmdet",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if variant not in FPN_VARIANTS:
            raise ValueError(f"FPN variant must be one of {sorted(FPN_VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.initial = InitialPyramid(
            in_channels, out_levels, channels, extra_source=FPN_VARIANTS[variant], dtype=dtype, rngs=rngs
        )
        self.in_levels = self.initial.in_levels
        self.out_levels = self.initial.out_levels
        self.channels = channels
        self.backbone_levels = self.initial.lateral_levels
        self.output = nnx.List(
            [
                Conv2d(channels, channels, 3, kernel_init=kaiming_uniform(1.0), dtype=dtype, rngs=rngs)
                for _ in self.backbone_levels
            ]
        )

    def __call__(self, features: dict[int, Array], image_sizes: Array | None = None) -> dict[int, Array]:
        pyramid = self.initial(features, image_sizes)
        levels = self.backbone_levels
        merged = {levels[-1]: pyramid[levels[-1]]}
        for level in reversed(levels[:-1]):
            fine = pyramid[level]
            merged[level] = fine + resize_between_strides(merged[level + 1], fine.shape[1:3], image_sizes,
                                                          2 ** (level + 1), 2**level, "nearest")
        for level, conv in zip(levels, self.output):
            pyramid[level] = conv(merged[level], padding_mask(image_sizes, merged[level].shape[1:3], 2**level))
        return {l: pyramid[l] for l in self.out_levels}
