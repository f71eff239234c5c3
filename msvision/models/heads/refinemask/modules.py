"""Networks of the RefineMask++ head (RefineMask's ``SimpleRefineMaskHead``, Zhang et al. 2021,
as used by the thesis, §5.4.1; released code DetSeg ``models/modules/refine_mask.py``).

Convolutions as in the released code: every 3×3 is an mmcv ``ConvModule`` (conv + ReLU,
kaiming-normal fan-out, zero bias), every 1×1 an ``nn.Conv2d`` re-initialised
kaiming-normal fan-out with zero bias. 1×1 convolutions are linear layers on the
channels here.

- :class:`MultiBranchFusionAvg`: ``merge(Σ_d ReLU(3×3_d(x)) + avgpool(x))``, d = 1, 3, 5,
  the average over the whole RoI grid broadcast back (RefineMask's ``MultiBranchFusionAvg``).
- :class:`SFMStage`: one semantic fusion stage (``SimpleSFMStage``).
- :class:`ClassLogits`: a 1×1 convolution to per-class mask logits, evaluated for one
  class per RoI.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.layers import Conv2d, kaiming_normal_fan_out

Array = jax.Array


def conv1x1(in_features: int, out_features: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.Linear:
    """``nn.Conv2d(in, out, 1)`` initialised kaiming-normal fan-out, zero bias (as released)."""
    return nnx.Linear(in_features, out_features, kernel_init=kaiming_normal_fan_out(),
                      bias_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)


def conv3x3(in_features: int, out_features: int, dilation: int = 1, *, dtype=None, rngs: nnx.Rngs) -> Conv2d:
    """The 3×3 convolution of an mmcv ``ConvModule`` (padding = dilation; the ReLU is applied by the caller)."""
    return Conv2d(in_features, out_features, 3, dilation=dilation, kernel_init=kaiming_normal_fan_out(),
                  dtype=dtype, rngs=rngs)


class MultiBranchFusionAvg(nnx.Module):
    """``merge_1×1(Σ_d ReLU(conv3×3_d(x)) + mean_{RoI grid}(x))`` on ``[N, S, S, F]`` (no activation after merge)."""

    def __init__(self, features: int, dilations: Sequence[int] = (1, 3, 5), *, dtype=None, rngs: nnx.Rngs):
        self.branches = nnx.List([conv3x3(features, features, int(d), dtype=dtype, rngs=rngs) for d in dilations])
        self.merge = conv1x1(features, features, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        total = jnp.mean(x, axis=(1, 2), keepdims=True)  # F.avg_pool2d(x, S): one value per RoI and channel
        for conv in self.branches:
            total = total + jax.nn.relu(conv(x))  # zero padding at the RoI grid border
        return self.merge(total)


class SFMStage(nnx.Module):
    """One semantic fusion stage at S × S with F features (RefineMask's ``SimpleSFMStage``).

    ``semantic_map``: ``ReLU(1×1_{C→F}(semantic features))`` on the whole semantic map
    (sampled per RoI by the head). ``__call__``: ``h = ReLU(1×1_{2F+1→F}([x, sem, σ(m)]))``,
    ``h = ReLU(MBFAvg(h))``, ``h = ReLU(1×1_{F→F/2−1}(h))``, output ``[h, σ(m)]`` (F/2
    channels, "concat before upsampling, same as paper"; ``out_features`` instead of F/2
    for a head with a width floor). The head upsamples it ×2.
    """

    def __init__(self, features: int, semantic_channels: int, dilations: Sequence[int] = (1, 3, 5), *,
                 out_features: int | None = None, dtype=None, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, rngs=rngs)
        out_features = features // 2 if out_features is None else int(out_features)
        self.semantic_in = conv1x1(semantic_channels, features, **kw)
        self.fuse_in = conv1x1(2 * features + 1, features, **kw)
        self.fusion = MultiBranchFusionAvg(features, dilations, **kw)
        self.fuse_out = conv1x1(features, out_features - 1, **kw)

    def semantic_map(self, semantic: Array) -> Array:
        """``[B, H, W, C]`` → ``[B, H, W, F]``."""
        return jax.nn.relu(self.semantic_in(semantic))

    def __call__(self, x: Array, semantic: Array, logits: Array) -> Array:
        """``x [N, S, S, F]``, ``semantic [N, S, S, F]`` (RoI-sampled), ``logits [N, S, S]`` → ``[N, S, S, F/2]``."""
        prob = jax.nn.sigmoid(logits.astype(jnp.float32)).astype(x.dtype)[..., None]
        h = jax.nn.relu(self.fuse_in(jnp.concatenate([x, semantic.astype(x.dtype), prob], axis=-1)))
        h = jax.nn.relu(self.fusion(h))
        h = jax.nn.relu(self.fuse_out(h))
        return jnp.concatenate([h, prob], axis=-1)


class ClassLogits(nnx.Module):
    """``1×1_{F→num_classes}`` mask logits, read at one class per RoI (class-specific masks,
    as released; ``num_classes = 1``: class-agnostic). Only the selected class's column is computed."""

    def __init__(self, features: int, num_classes: int, *, dtype=None, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.dtype = dtype
        self.kernel = nnx.Param(kaiming_normal_fan_out()(rngs.params(), (features, num_classes), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_classes,), jnp.float32))

    def __call__(self, x: Array, labels: Array) -> Array:
        """``x [N, S, S, F]``, ``labels [N] int32`` → ``[N, S, S]`` float32 logits of each RoI's class."""
        labels = jnp.clip(labels, 0, self.num_classes - 1)
        dtype = self.dtype or x.dtype
        w = self.kernel[...].T[labels].astype(dtype)  # [N, F]
        out = jnp.einsum("nhwf,nf->nhw", x.astype(dtype), w)
        return (out + self.bias[...][labels][:, None, None].astype(dtype)).astype(jnp.float32)


__all__ = ["conv1x1", "conv3x3", "MultiBranchFusionAvg", "SFMStage", "ClassLogits"]
