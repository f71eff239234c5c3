"""The neck interface and the initial feature pyramid shared by all necks.

A neck maps backbone features ``{level: [B, H_l, W_l, C_l]}`` (levels ``in_levels``)
to a feature pyramid ``{level: [B, H_l, W_l, channels]}`` for ``out_levels``
(thesis section 2.1). Every neck exposes ``in_levels``, ``out_levels`` and
``channels`` and is called as ``neck(features) -> pyramid``.

:class:`InitialPyramid` is the thesis's initial pyramid (section 2.4): 1×1 linear
projections of C3–C5 (and C2 for P2) and, for levels above the backbone's, two 3×3
stride-2 convolutions with a ReLU in between (P6 from C5 or from the projected P5,
P7 from ReLU(P6)). Initialisation as the author's TPN/FPN code (DetSeg
``configs/gc/tpn_37_eeec_3b2_gn_v3.yaml``): ``kaiming_uniform_(a=1)`` weights, zero biases;
the author's BiFPN (DetSeg ``deprecated/bifpn.py``) instead keeps PyTorch's default init
and puts a GroupNorm before the ReLU of the P7 path (``init='torch'``,
``extra_norm_groups=8``).
"""

from __future__ import annotations

import math
from typing import Mapping, Protocol, Sequence

import jax
from flax import nnx

from msvision.models.layers import Conv2d, GroupNorm, kaiming_uniform, torch_default_bias
from msvision.ops.padding import padding_mask

Array = jax.Array

INITS = ("c2_xavier", "torch")
GROUP_NORM_EPS = 1e-5  # torch.nn.GroupNorm default


class Neck(Protocol):
    """What the detector expects from a neck."""

    in_levels: tuple[int, ...]
    out_levels: tuple[int, ...]
    channels: int

    def __call__(self, features: dict[int, Array], image_sizes: Array | None = None) -> dict[int, Array]:
        """``image_sizes [B, 2]`` (h, w inside the padding) makes the neck padding-aware."""


class InitialPyramid(nnx.Module):
    """Lateral 1×1 projections plus extra stride-2 levels.

    Args:
      in_channels: ``{level: C_l}`` of the backbone features used (``in_levels``).
      out_levels: pyramid levels to produce; levels ``≤ max(in_levels)`` must be
        backbone levels (projected by a 1×1 conv), levels above are extra levels.
      channels: pyramid width D (256).
      extra_source: ``'input'`` → the first extra level is computed from the top
        backbone feature (C5, 2048 channels for R50: detectron2 RetinaNet, the
        author's TPN); ``'lateral'`` → from the projected top level (P5, D
        channels: mmdet ``add_extra_convs='on_lateral'``, the author's fpn_v3).
      p6_relu: the first extra level enters the pyramid after the ReLU that
        precedes the next extra conv (the in-place ReLU of the TPN-paper configs, e.g.
        DetSeg ``configs/gc/tpn_37_eeec_3b2_gn.yaml``, table 3.1) instead of before it
        (mmdet, the FQDet TPN config ``_v3``).
      init: ``'c2_xavier'`` → ``kaiming_uniform_(a=1)`` kernels and zero biases
        (detectron2 ``c2_xavier_fill``; the author's TPN and FPN projections);
        ``'torch'`` → PyTorch's default ``Conv2d`` init,
        ``kaiming_uniform_(a=sqrt(5))`` kernels (bound ``1/sqrt(fan_in)``) and
        ``U(±1/sqrt(fan_in))`` biases (the author's BiFPN sets no init).
      extra_norm_groups: if > 0, a GroupNorm with this many groups (eps 1e-5,
        affine 1/0) precedes the ReLU in front of every extra conv after the
        first: P7 = conv(ReLU(GN(P6))) (the author's ``BiFPN.in_projs``);
        0 → P7 = conv(ReLU(P6)). The norm is padding-aware.
      dtype: compute dtype.

    Call: ``features {level: [B, H_l, W_l, C_l]}`` → ``{level: [B, H_l, W_l, D]}``
    for ``out_levels``. Extra level ``l`` has size ``⌈H_{l-1}/2⌉`` (3×3, stride 2,
    padding 1). The first extra conv sees its input without ReLU; every further
    one sees ``ReLU(previous)`` (detectron2 ``LastLevelP6P7``, mmdet
    ``relu_before_extra_convs``), or ``ReLU(GN(previous))`` with
    ``extra_norm_groups``.
    """

    def __init__(
        self,
        in_channels: Mapping[int, int],
        out_levels: Sequence[int],
        channels: int = 256,
        *,
        extra_source: str = "input",
        p6_relu: bool = False,
        init: str = "c2_xavier",
        extra_norm_groups: int = 0,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if extra_source not in ("input", "lateral"):
            raise ValueError(f"extra_source must be 'input' or 'lateral', got {extra_source!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if p6_relu and extra_norm_groups > 0:
            # the TPN-paper configs' in-place ReLU has no counterpart after a norm: say which one is meant
            raise ValueError("p6_relu and extra_norm_groups > 0 cannot be combined")
        self.in_levels = tuple(sorted(in_channels))
        self.out_levels = tuple(sorted(out_levels))
        self.channels = channels
        self.extra_source = extra_source
        self.p6_relu = p6_relu
        top = self.in_levels[-1]
        lateral_levels = [l for l in self.out_levels if l <= top]
        missing = [l for l in lateral_levels if l not in in_channels]
        if missing:
            raise ValueError(f"pyramid levels {missing} need backbone features, got levels {self.in_levels}")
        extra_levels = [l for l in self.out_levels if l > top]
        if extra_levels != list(range(top + 1, top + 1 + len(extra_levels))):
            raise ValueError(f"extra levels must follow the top backbone level {top}: {extra_levels}")
        if top not in lateral_levels and extra_source == "lateral" and extra_levels:
            raise ValueError("extra_source='lateral' needs the top backbone level among out_levels")
        self.lateral_levels = tuple(lateral_levels)
        self.extra_levels = tuple(extra_levels)

        self.init = init
        self.extra_norm_groups = extra_norm_groups

        def conv(cin: int, k: int, stride: int = 1) -> Conv2d:
            if init == "torch":
                inits = dict(kernel_init=kaiming_uniform(math.sqrt(5.0)), bias_init=torch_default_bias(cin * k * k))
            else:
                inits = dict(kernel_init=kaiming_uniform(1.0))
            return Conv2d(cin, channels, k, stride, dtype=dtype, rngs=rngs, **inits)

        self.lateral = nnx.List([conv(in_channels[l], 1) for l in lateral_levels])
        extra = []
        for i, _ in enumerate(extra_levels):
            cin = in_channels[top] if (i == 0 and extra_source == "input") else channels
            extra.append(conv(cin, 3, 2))
        self.extra = nnx.List(extra)
        # extra_norm[i - 1] normalises the input of extra conv i ≥ 1 (author's BiFPN: [GN, ReLU, conv])
        self.extra_norm = nnx.List([
            GroupNorm(channels, extra_norm_groups, epsilon=GROUP_NORM_EPS, dtype=dtype, rngs=rngs)
            for _ in extra_levels[1:]
        ]) if extra_norm_groups > 0 else None

    def __call__(self, features: dict[int, Array], image_sizes: Array | None = None) -> dict[int, Array]:
        pyramid = {l: conv(features[l]) for l, conv in zip(self.lateral_levels, self.lateral)}
        if self.extra_levels:
            top = self.in_levels[-1]
            x = features[top] if self.extra_source == "input" else pyramid[top]
            for i, (level, conv) in enumerate(zip(self.extra_levels, self.extra)):
                mask = padding_mask(image_sizes, x.shape[1:3], 2 ** (level - 1))
                x = conv(x if i == 0 else self._pre_activation(i, x, mask), mask)
                pyramid[level] = jax.nn.relu(x) if (i == 0 and self.p6_relu) else x
        return pyramid

    def _pre_activation(self, i: int, x: Array, mask: Array | None) -> Array:
        """``ReLU(x)`` or ``ReLU(GN(x))``: the input of extra conv ``i`` ≥ 1 (``x``: extra level ``i−1``)."""
        if self.extra_norm is not None:
            x = self.extra_norm[i - 1](x, mask)
        return jax.nn.relu(x)
