"""Networks of the Mask R-CNN++ and PointRend++ heads (thesis §5.4.1; released code
DetSeg ``models/heads/seg/mmdet_roi.py``).

- :class:`Deconv2x`: ``nn.ConvTranspose2d(C, C, 2, stride=2)`` (every input cell → its
  2×2 children, no overlap).
- :class:`FCNMaskHead`: mmdet ``FCNMaskHead``: ``num_convs`` × (3×3 conv + ReLU), deconv
  ×2 + ReLU, 1×1 conv → one 28×28 logit map per class (class-specific masks).
- :class:`PointHead`: mmdet ``MaskPointHead``: ``num_fcs`` × (FC + ReLU) on
  ``[fine features, coarse logits]`` with the coarse logits concatenated again before
  every next FC (``coarse_pred_each_layer``), then a class-specific FC.

Init (mmdet/mmcv, as in the released code): the convolutions, the deconvolution and the point FCs are
mmcv ``ConvModule``/``kaiming_normal_(mode='fan_out', relu)`` with zero bias; the final 1×1
logit layer of the FCN head too (``FCNMaskHead.init_weights``); the point head's logit FC
is ``normal(std=0.001)`` with zero bias (``MaskPointHead.init_weights``).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.layers import Conv2d, kaiming_normal_fan_out

Array = jax.Array
Dtype = Any


class Deconv2x(nnx.Module):
    """``y[n, 2i+a, 2j+b, o] = Σ_c x[n, i, j, c] · kernel[a, b, c, o] + bias[o]``.

    torch ``ConvTranspose2d(in, out, 2, stride=2)`` with ``weight[c, o, a, b] = kernel[a, b, c, o]``.
    ``kernel [2, 2, in, out]``: flax's fan-out (4·out) equals torch's (4·in) when in = out,
    the case of the FCN head.
    """

    def __init__(self, in_features: int, out_features: int, *, dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        self.kernel = nnx.Param(kaiming_normal_fan_out()(rngs.params(), (2, 2, in_features, out_features),
                                                         jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        """``x: [N, S, S, in]`` → ``[N, 2S, 2S, out]``."""
        dtype = self.dtype or x.dtype
        n, h, w, _ = x.shape
        y = jnp.einsum("nijc,abco->niajbo", x.astype(dtype), self.kernel[...].astype(dtype))
        return y.reshape(n, 2 * h, 2 * w, -1) + self.bias[...].astype(dtype)


class FCNMaskHead(nnx.Module):
    """mmdet ``FCNMaskHead``: ``[N, S, S, C]`` RoI features → ``[N, 2S, 2S, num_classes]`` logits."""

    def __init__(self, channels: int, num_classes: int, num_convs: int = 4, *, dtype: Optional[Dtype] = None,
                 rngs: nnx.Rngs):
        kw = dict(kernel_init=kaiming_normal_fan_out(), dtype=dtype, rngs=rngs)
        self.convs = nnx.List([Conv2d(channels, channels, 3, **kw) for _ in range(num_convs)])
        self.upsample = Deconv2x(channels, channels, dtype=dtype, rngs=rngs)
        self.logits = Conv2d(channels, num_classes, 1, **kw)

    def __call__(self, x: Array) -> Array:
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        x = jax.nn.relu(self.upsample(x))
        return self.logits(x).astype(jnp.float32)


class PointHead(nnx.Module):
    """mmdet ``MaskPointHead``: per-point MLP on fine-grained features and coarse logits.

    ``x = [fine, coarse]``; for each FC: ``x = [ReLU(FC(x)), coarse]``; logits = FC(x).
    With C = 256, 80 classes and 3 FCs of 256: 3·(336·256 + 256) + 336·80 + 80 = 285,776
    parameters (PointRend++ minus Mask R-CNN++).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, num_fcs: int = 3, *,
                 dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        fan_out = kaiming_normal_fan_out()
        self.fcs = nnx.List()
        width = in_features
        for _ in range(num_fcs):
            self.fcs.append(nnx.Linear(width + num_classes, hidden, kernel_init=fan_out,
                                       bias_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs))
            width = hidden
        self.logits = nnx.Linear(width + num_classes, num_classes, kernel_init=nnx.initializers.normal(1e-3),
                                 bias_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)

    def __call__(self, fine: Array, coarse: Array) -> Array:
        """``fine: [..., P, C]``, ``coarse: [..., P, num_classes]`` → ``[..., P, num_classes]`` float32."""
        dtype = fine.dtype
        coarse = coarse.astype(dtype)
        x = fine
        for fc in self.fcs:
            x = jax.nn.relu(fc(jnp.concatenate([x, coarse], axis=-1)))
        return self.logits(jnp.concatenate([x, coarse], axis=-1)).astype(jnp.float32)


__all__ = ["Deconv2x", "FCNMaskHead", "PointHead"]
