"""ResNet-18/34/50/101 in torchvision layout ("ResNet v1.5": stride on the 3×3 conv).

Thesis section 2.4: initialised from torchvision ImageNet weights
(:func:`msvision.models.backbones.convert_torchvision.load_torchvision_resnet`), stem
+ stage 1 + all BatchNorm frozen, BatchNorm as a fixed affine map.

Attribute names follow torchvision's state dict (``conv1``, ``bn1``, ``layer1`` …
``layer4``; blocks ``conv1..3``, ``bn1..3``, ``downsample_conv``/``downsample_bn`` for
``downsample.0``/``downsample.1``) so the converter is a name-for-name copy.

Levels: C2 = ``layer1`` output (stride 4), C3 = ``layer2`` (8), C4 = ``layer3``
(16), C5 = ``layer4`` (32). Stages above ``max(out_levels)`` are not built.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
from flax import nnx

from msvision.models.layers import Conv2d, FrozenBatchNorm, GroupNorm, kaiming_normal_fan_out, max_pool_3x3_s2
from msvision.ops.padding import apply_mask, padding_mask

Array = jax.Array

# depth -> (block type, blocks per stage)
RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _norm(channels, *, norm, train_bn, dtype, rngs, zero_init=False):
    """The block's normalisation: frozen BatchNorm (thesis; pretrained weights) or GroupNorm.

    GroupNorm (8 groups, trainable) is for training from scratch, where a frozen
    BatchNorm with no ImageNet statistics is an identity and leaves the network
    unnormalised. ``zero_init`` zeroes the scale of a residual branch's last norm so
    each block starts as the identity (Goyal et al. 2017).
    """
    if norm == "frozen_bn":
        return FrozenBatchNorm(channels, trainable_affine=train_bn, dtype=dtype)
    if norm == "group_norm":
        scale_init = nnx.initializers.zeros if zero_init else nnx.initializers.ones
        return GroupNorm(channels, min(8, channels), epsilon=1e-5, scale_init=scale_init, dtype=dtype, rngs=rngs)
    raise ValueError(f"unknown ResNet norm {norm!r} (frozen_bn | group_norm)")


def _conv(cin, cout, k, stride, frozen, dtype, rngs):
    # torchvision ResNet: no conv bias, kaiming_normal fan_out init.
    return Conv2d(
        cin, cout, k, stride, use_bias=False, kernel_init=kaiming_normal_fan_out(),
        frozen=frozen, dtype=dtype, rngs=rngs,
    )


class BasicBlock(nnx.Module):
    expansion = 1
    num_convs = 2  # conv1/bn1, conv2/bn2 (torchvision's names)

    def __init__(self, cin, width, stride, *, frozen, train_bn, dtype, rngs, norm="frozen_bn"):
        cout = width * self.expansion
        n = dict(norm=norm, train_bn=train_bn, dtype=dtype, rngs=rngs)
        self.stride = stride
        self.conv1 = _conv(cin, width, 3, stride, frozen, dtype, rngs)
        self.bn1 = _norm(width, **n)
        self.conv2 = _conv(width, cout, 3, 1, frozen, dtype, rngs)
        self.bn2 = _norm(cout, zero_init=True, **n)
        needs_projection = stride != 1 or cin != cout
        self.downsample_conv = _conv(cin, cout, 1, stride, frozen, dtype, rngs) if needs_projection else None
        self.downsample_bn = _norm(cout, **n) if needs_projection else None

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, in_stride: int = 1) -> Array:
        """``x`` of stride ``in_stride``; ``image_sizes [B, 2]`` makes it padding-aware."""
        y = self.conv1(x, padding_mask(image_sizes, x.shape[1:3], in_stride))
        m_out = padding_mask(image_sizes, y.shape[1:3], in_stride * self.stride)
        y = jax.nn.relu(self.bn1(y, m_out))
        y = self.bn2(self.conv2(y, m_out), m_out)
        if self.downsample_conv is not None:
            x = self.downsample_bn(self.downsample_conv(x), m_out)
        return jax.nn.relu(y + x)


class Bottleneck(nnx.Module):
    expansion = 4
    num_convs = 3  # conv1/bn1 … conv3/bn3 (torchvision's names)

    def __init__(self, cin, width, stride, *, frozen, train_bn, dtype, rngs, norm="frozen_bn"):
        cout = width * self.expansion
        n = dict(norm=norm, train_bn=train_bn, dtype=dtype, rngs=rngs)
        self.stride = stride
        self.conv1 = _conv(cin, width, 1, 1, frozen, dtype, rngs)
        self.bn1 = _norm(width, **n)
        self.conv2 = _conv(width, width, 3, stride, frozen, dtype, rngs)  # v1.5: stride here
        self.bn2 = _norm(width, **n)
        self.conv3 = _conv(width, cout, 1, 1, frozen, dtype, rngs)
        self.bn3 = _norm(cout, zero_init=True, **n)
        needs_projection = stride != 1 or cin != cout
        self.downsample_conv = _conv(cin, cout, 1, stride, frozen, dtype, rngs) if needs_projection else None
        self.downsample_bn = _norm(cout, **n) if needs_projection else None

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, in_stride: int = 1) -> Array:
        """``x`` of stride ``in_stride``; ``image_sizes [B, 2]`` makes it padding-aware."""
        m_in = padding_mask(image_sizes, x.shape[1:3], in_stride)
        y = jax.nn.relu(self.bn1(self.conv1(x), m_in))
        y = self.conv2(y, m_in)
        m_out = padding_mask(image_sizes, y.shape[1:3], in_stride * self.stride)
        y = jax.nn.relu(self.bn2(y, m_out))
        y = self.bn3(self.conv3(y), m_out)
        if self.downsample_conv is not None:
            x = self.downsample_bn(self.downsample_conv(x), m_out)
        return jax.nn.relu(y + x)


class ResNet(nnx.Module):
    """ResNet feature extractor.

    Args:
      depth: 18, 34, 50, 101 (or 152).
      out_levels: levels to return, subset of 2..5.
      width: base width (64 in torchvision); stage ``i`` has ``width·2^(i-1)`` hidden
        channels. Tiny tests use e.g. 8.
      frozen_stages: 0 trains everything; ``k ≥ 1`` freezes the stem and stages
        1..k (their conv weights become ``Frozen``, gradients stop at their output).
      freeze_bn: BatchNorm affine frozen too (thesis); with ``False`` the affine
        scale/bias are trainable but the statistics stay fixed (no batch statistics).
      blocks_per_stage: override the depth's block counts (same block type), e.g.
        ``(1, 1, 1, 1)`` for small tests.
      norm: ``'frozen_bn'`` (thesis, for pretrained weights) or ``'group_norm'``
        (trainable GroupNorm(8), for training from scratch; not loadable from
        torchvision weights).
      dtype: compute dtype; parameters stay float32.

    Call: ``images [B, H, W, 3]`` (normalised, zero on the padding), optional
    ``image_sizes [B, 2]`` int (h, w) inside the padding → ``{level: [B, ⌈H/2^l⌉,
    ⌈W/2^l⌉, C_l]}`` with ``C_l = width·2^(l-2)·expansion``. With ``image_sizes``
    every image's valid cells are what the image alone would give
    (:mod:`msvision.ops.padding`).
    """

    def __init__(
        self,
        depth: int = 50,
        *,
        out_levels: Sequence[int] = (3, 4, 5),
        width: int = 64,
        frozen_stages: int = 1,
        freeze_bn: bool = True,
        blocks_per_stage: Optional[Sequence[int]] = None,
        norm: str = "frozen_bn",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if depth not in RESNET_SPECS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose from {sorted(RESNET_SPECS)}")
        out_levels = tuple(sorted(out_levels))
        if not out_levels or out_levels[0] < 2 or out_levels[-1] > 5:
            raise ValueError(f"ResNet out_levels must be within 2..5, got {out_levels}")
        block_type, blocks = RESNET_SPECS[depth]
        blocks = tuple(blocks_per_stage) if blocks_per_stage is not None else blocks
        block_cls = BasicBlock if block_type == "basic" else Bottleneck
        self.depth = depth
        self.out_levels = out_levels
        self.width = width
        self.frozen_stages = frozen_stages
        train_bn = not freeze_bn

        self.conv1 = Conv2d(
            3, width, 7, 2, use_bias=False, kernel_init=kaiming_normal_fan_out(),
            frozen=frozen_stages >= 1, dtype=dtype, rngs=rngs,
        )
        self.bn1 = _norm(width, norm=norm, train_bn=train_bn, dtype=dtype, rngs=rngs)
        cin = width
        self.out_channels = {}
        stages = []
        for i, num_blocks in enumerate(blocks[: out_levels[-1] - 1]):
            stage_width = width * 2**i
            frozen = i + 1 <= frozen_stages
            stage = []
            for j in range(num_blocks):
                stride = 2 if (j == 0 and i > 0) else 1
                stage.append(block_cls(
                    cin, stage_width, stride, frozen=frozen, train_bn=train_bn, dtype=dtype, rngs=rngs, norm=norm
                ))
                cin = stage_width * block_cls.expansion
            stages.append(nnx.List(stage))
            self.out_channels[i + 2] = cin
        self.layer1 = stages[0]
        self.layer2 = stages[1] if len(stages) > 1 else None
        self.layer3 = stages[2] if len(stages) > 2 else None
        self.layer4 = stages[3] if len(stages) > 3 else None
        self.out_channels = {l: self.out_channels[l] for l in out_levels}

    def stages(self) -> list:
        return [s for s in (self.layer1, self.layer2, self.layer3, self.layer4) if s is not None]

    def __call__(self, images: Array, image_sizes: Optional[Array] = None,
                 rng: Optional[Array] = None) -> dict[int, Array]:
        del rng  # the backbone interface's training key; ResNet has no stochastic layers
        x = self.conv1(images, padding_mask(image_sizes, images.shape[1:3], 1))
        x = jax.nn.relu(self.bn1(x, padding_mask(image_sizes, x.shape[1:3], 2)))
        # Post-ReLU values are >= 0, so zeros in the padding never win the max.
        x = max_pool_3x3_s2(apply_mask(x, padding_mask(image_sizes, x.shape[1:3], 2)))
        if self.frozen_stages >= 1:
            x = jax.lax.stop_gradient(x)
        features = {}
        stride = 4
        for i, stage in enumerate(self.stages()):
            x = stage[0](x, image_sizes, stride)
            stride *= stage[0].stride  # the other blocks of a stage have stride 1
            for block in stage[1:]:
                x = block(x, image_sizes, stride)
            if i + 1 <= self.frozen_stages:
                x = jax.lax.stop_gradient(x)
            if i + 2 in self.out_levels:
                features[i + 2] = x
        return features
