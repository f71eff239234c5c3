"""DefEncoder neck: the Deformable DETR encoder as configured in DINO (thesis 4.5.1).

Thesis section 4.5.1: "For the DefEncoder neck, we use the implementation from
MMDetection, following the same settings as in DINO", as DefEnc-P3 (P3–P7) and
DefEnc-P2 (P2–P7). The author's configuration (DetSeg ``configs/cores/in_proj_v*.py``
+ ``deform_encoder_v*.py``, ``models/cores/deform_encoder.py``) is reproduced:

1. Input projection, mmdet ``ChannelMapper`` (:class:`ChannelMapper`): per backbone
   level a 1×1 conv (no bias) + GroupNorm(32); extra levels by 3×3 stride-2 convs
   (no bias) + GroupNorm(32), the first on the top backbone map (C5, 2048 ch), the
   next on the previous extra level; no activation anywhere (``act_cfg=None``).
   This differs from the TPN/FPN initial pyramid (no GN, ReLU before P7).
2. Position embedding per level: mmdet ``SinePositionalEncoding(num_feats=128,
   temperature=20, normalize=True, offset=0.0)`` computed from the level's padding
   mask, plus a learned level embedding (``[L, D]``, N(0, 1) init).
3. ``num_layers`` (6) post-norm encoder layers, mmdet
   ``DeformableDetrTransformerEncoderLayer``:
   ``x = LN(x + MSDA(query=x + pos, value=x, reference_points, padding mask))``;
   ``x = LN(x + Linear(ReLU(Linear(x))))`` with FFN hidden size 2048, dropout 0.
   MSDA: 8 heads, 4 points per head and level, value padding positions zeroed.
4. Reference points: the pixel centres of every level normalised by the level's
   *valid* size, times the valid ratio of each sampled level (mmdet
   ``get_encoder_reference_points``), so padding is handled exactly as Deformable
   DETR does. A level has ``ceil(h / 2^l)`` × ``ceil(w / 2^l)`` valid cells (the
   author's ``F.interpolate`` of the image pad mask, for padded sizes that are
   multiples of 2^l).

Init: all encoder weight matrices xavier-uniform (mmdet DeformEncoder re-inits every
parameter with dim > 1), then the MSDA layer's own init (zero offset kernel with
the directional bias, zero attention-weight projection); FFN biases keep PyTorch's
default ``U(±1/sqrt(fan_in))``; LayerNorm 1/0, eps 1e-5. ChannelMapper convs
xavier-uniform (mmdet's ``init_cfg``).

Padding: ``neck(features, image_sizes=None)``; ``image_sizes: [B, 2] int`` (h, w)
of the images inside the padding (``Batch.image_sizes``). Without it every
position is valid (valid ratios 1). A sample with no valid pixel (batch padding)
gets a valid count clamped to one pixel to avoid 0/0.

Parameters at D = 256 (R50): DefEnc-P3 14 070 848 (ChannelMapper 6 228 480, six
layers 7 841 088, level embedding 1 280); DefEnc-P2 adds one level.

Config (``config.model.neck``, name 'defenc'): the keyword arguments of
:class:`DefEncoder` (out_levels (3, …, 7) or (2, …, 7) with backbone levels
(2, 3, 4, 5); msda_impl 'auto' | 'xla' | 'cpu' | 'triton' | 'triton_interpret' |
'reference', see :mod:`msvision.ops.msda`). Dropout is 0 (DINO's value) and not configurable.

Memory: ``remat=True`` runs the layers as a ``lax.scan`` under ``jax.checkpoint`` and
keeps only each layer's ``[B, S, D]`` input for the backward pass (same outputs and
gradients). XLA's plan for the R50 DefEnc-P2 FQDetV2 train step on 2×800² (53 343
tokens per image): 36.5 GiB of temporaries without, 7.9 GiB with (CPU backend,
before the CPU kernel gradients of ``msvision.ops.conv`` added 0.8 GiB to both);
the recomputation adds one encoder forward to every step.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.attention.msda import MultiScaleDeformableAttention
from msvision.models.layers import GROUP_NORM_EPS, Conv2d, GroupNorm, rematerialized_scan, torch_default_bias
from msvision.ops.padding import padding_mask

Array = jax.Array
Dtype = Any

LAYER_NORM_EPS = 1e-5


class ChannelMapper(nnx.Module):
    """mmdet ``ChannelMapper(kernel_size=1, norm_cfg=GN(32), act_cfg=None, num_outs=n)``.

    ``features {level: [B, H_l, W_l, C_l]}`` → ``{level: [B, H_l, W_l, D]}`` for
    ``out_levels``; extra level l has size ``ceil(H_{l-1} / 2)``.
    """

    def __init__(self, in_channels: dict[int, int], out_levels: Sequence[int], channels: int = 256, *,
                 num_groups: int = 32, dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        self.in_levels = tuple(sorted(in_channels))
        self.out_levels = tuple(sorted(out_levels))
        top = self.in_levels[-1]
        self.lateral_levels = tuple(l for l in self.out_levels if l <= top)
        self.extra_levels = tuple(l for l in self.out_levels if l > top)
        if self.lateral_levels != self.in_levels:
            raise ValueError(f"DefEncoder maps every backbone level {self.in_levels}; out_levels {self.out_levels}")
        if self.extra_levels != tuple(range(top + 1, top + 1 + len(self.extra_levels))):
            raise ValueError(f"extra levels must follow level {top}: {self.extra_levels}")
        xavier = nnx.initializers.xavier_uniform()

        def conv(cin, k, stride):
            return Conv2d(cin, channels, k, stride, use_bias=False, kernel_init=xavier, dtype=dtype, rngs=rngs)

        def norm():
            return GroupNorm(channels, num_groups, epsilon=GROUP_NORM_EPS, dtype=dtype, rngs=rngs)

        self.lateral_convs = nnx.List([conv(in_channels[l], 1, 1) for l in self.lateral_levels])
        self.lateral_norms = nnx.List([norm() for _ in self.lateral_levels])
        self.extra_convs = nnx.List(
            [conv(in_channels[top] if i == 0 else channels, 3, 2) for i in range(len(self.extra_levels))]
        )
        self.extra_norms = nnx.List([norm() for _ in self.extra_levels])

    def __call__(self, features: dict[int, Array], image_sizes: Optional[Array] = None) -> dict[int, Array]:
        """``image_sizes [B, 2]`` (h, w inside the padding) makes it padding-aware."""
        def mask(x, level):
            return padding_mask(image_sizes, x.shape[1:3], 2**level)

        out = {l: n(c(features[l]), mask(features[l], l))
               for l, c, n in zip(self.lateral_levels, self.lateral_convs, self.lateral_norms)}
        x = features[self.in_levels[-1]]
        for level, conv, norm in zip(self.extra_levels, self.extra_convs, self.extra_norms):
            x = conv(x, mask(x, level - 1))
            x = norm(x, mask(x, level))
            out[level] = x
        return out


def sine_position_encoding(valid: Array, num_feats: int = 128, temperature: float = 20.0, offset: float = 0.0,
                           scale: float = 2 * math.pi, eps: float = 1e-6) -> Array:
    """mmdet ``SinePositionalEncoding(normalize=True)`` (DETR's) from a validity mask.

    Args:
      valid: ``[B, H, W] bool``, True on image positions (mmdet's ``~mask``).
    Returns:
      ``[B, H, W, 2 * num_feats] float32``: (y features, x features), each
      interleaved (sin, cos) pairs.
    """
    v = valid.astype(jnp.float32)
    y = jnp.cumsum(v, axis=1)
    x = jnp.cumsum(v, axis=2)
    y = (y + offset) / (y[:, -1:, :] + eps) * scale
    x = (x + offset) / (x[:, :, -1:] + eps) * scale
    dim_t = jnp.arange(num_feats, dtype=jnp.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)

    def embed(p):
        p = p[..., None] / dim_t  # [B, H, W, F]
        return jnp.stack([jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])], axis=-1).reshape(*p.shape)

    return jnp.concatenate([embed(y), embed(x)], axis=-1)


def valid_ratios(valid: Array) -> Array:
    """Deformable DETR ``get_valid_ratio``: ``[B, H, W] bool`` → ``[B, 2]`` (w, h) ratios.

    Counts valid rows in the first column and valid columns in the first row; at
    least one of each (a fully padded sample would give 0/0 downstream).
    """
    h, w = valid.shape[1:3]
    valid_h = jnp.maximum(jnp.sum(valid[:, :, 0], axis=1), 1).astype(jnp.float32)
    valid_w = jnp.maximum(jnp.sum(valid[:, 0, :], axis=1), 1).astype(jnp.float32)
    return jnp.stack([valid_w / w, valid_h / h], axis=-1)


def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]], ratios: Array) -> Array:
    """mmdet ``get_encoder_reference_points``.

    Args:
      spatial_shapes: static ``((H_l, W_l), ...)``.
      ratios: ``[B, L, 2]`` valid ratios (w, h) per level.
    Returns:
      ``[B, S, L, 2]`` (x, y) in [0, 1] of each sampled level's padded map.
    """
    refs = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        ry, rx = jnp.meshgrid(jnp.linspace(0.5, h - 0.5, h), jnp.linspace(0.5, w - 0.5, w), indexing="ij")
        ry = ry.reshape(-1)[None] / (ratios[:, None, lvl, 1] * h)
        rx = rx.reshape(-1)[None] / (ratios[:, None, lvl, 0] * w)
        refs.append(jnp.stack([rx, ry], axis=-1))
    ref = jnp.concatenate(refs, axis=1)  # [B, S, 2]
    return ref[:, :, None] * ratios[:, None]


def _xavier_linear(cin: int, cout: int, *, dtype, rngs) -> nnx.Linear:
    return nnx.Linear(cin, cout, kernel_init=nnx.initializers.xavier_uniform(), bias_init=torch_default_bias(cin),
                      dtype=dtype, rngs=rngs)


class DefEncoderLayer(nnx.Module):
    """Post-norm Deformable DETR encoder layer: ``[B, S, D]`` → ``[B, S, D]``."""

    def __init__(self, channels: int, num_levels: int, *, num_heads: int, num_points: int, ffn_dim: int,
                 msda_impl: str = "auto", dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        self.self_attn = MultiScaleDeformableAttention(
            channels, num_heads, num_levels, num_points, reference_mode="points", dtype=dtype, impl=msda_impl,
            rngs=rngs,
        )
        self.norm1 = nnx.LayerNorm(channels, epsilon=LAYER_NORM_EPS, dtype=dtype, rngs=rngs)
        self.ffn_in = _xavier_linear(channels, ffn_dim, dtype=dtype, rngs=rngs)
        self.ffn_out = _xavier_linear(ffn_dim, channels, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(channels, epsilon=LAYER_NORM_EPS, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, pos: Array, reference_points: Array, spatial_shapes, padding_mask: Optional[Array]):
        attn = self.self_attn(x + pos.astype(x.dtype), x, spatial_shapes, reference_points,
                              value_padding_mask=padding_mask)
        x = self.norm1(x + attn.astype(x.dtype))
        x = self.norm2(x + self.ffn_out(jax.nn.relu(self.ffn_in(x))).astype(x.dtype))
        return x


class DefEncoder(nnx.Module):
    """DefEnc-P3 / DefEnc-P2 neck (Deformable DETR encoder, DINO settings).

    ``neck(features, image_sizes=None)``: ``features {level: [B, H_l, W_l, C_l]}`` for
    ``in_levels`` → ``{level: [B, H_l, W_l, D]}`` for ``out_levels``. With
    ``image_sizes [B, 2]`` (h, w inside the padding) the padded cells are masked out
    of the attention (the author's image masks; a level has ``ceil(h / 2^l)`` valid
    rows) and of the input projection's GroupNorm.

    Attributes:
      in_levels, out_levels, channels: the neck interface.
      input_proj: :class:`ChannelMapper`.
      level_embed: ``[L, D]`` learned level embeddings.
      layers: ``num_layers`` :class:`DefEncoderLayer`.
    """

    def __init__(
        self,
        in_channels: dict[int, int],
        *,
        out_levels: Sequence[int] = (3, 4, 5, 6, 7),
        channels: int = 256,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dim: int = 2048,
        msda_impl: str = "auto",
        remat: bool = False,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        self.in_levels = tuple(sorted(in_channels))
        self.out_levels = tuple(sorted(out_levels))
        self.channels = channels
        self.num_layers = num_layers
        self.remat = remat
        num_levels = len(self.out_levels)
        self.input_proj = ChannelMapper(in_channels, self.out_levels, channels, dtype=dtype, rngs=rngs)
        self.level_embed = nnx.Param(jax.random.normal(rngs.params(), (num_levels, channels), jnp.float32))
        self.layers = nnx.List([
            DefEncoderLayer(channels, num_levels, num_heads=num_heads, num_points=num_points, ffn_dim=ffn_dim,
                            msda_impl=msda_impl, dtype=dtype, rngs=rngs)
            for _ in range(num_layers)
        ])

    def __call__(self, features: dict[int, Array], image_sizes: Optional[Array] = None) -> dict[int, Array]:
        """``features {level: [B, H_l, W_l, C_l]}``, ``image_sizes [B, 2]`` int (optional)."""
        return self.encode(self.input_proj(features, image_sizes), image_sizes)

    def encode(self, pyramid: dict[int, Array], image_sizes: Optional[Array] = None) -> dict[int, Array]:
        """The encoder on the projected pyramid ``{level: [B, H_l, W_l, D]}`` (same shapes out)."""
        maps = [pyramid[l] for l in self.out_levels]
        batch = maps[0].shape[0]
        spatial_shapes = tuple((int(m.shape[1]), int(m.shape[2])) for m in maps)
        if image_sizes is None:
            level_valid = [jnp.ones((batch, h, w), bool) for h, w in spatial_shapes]
        else:
            # the author's F.interpolate(pad_mask, size) (nearest) of the image mask keeps
            # ceil(h / 2^l) rows when the padded size is a multiple of 2^l
            level_valid = [padding_mask(image_sizes, (h, w), 2**l)[..., 0]
                           for l, (h, w) in zip(self.out_levels, spatial_shapes)]
        pos = jnp.concatenate([
            (sine_position_encoding(v, self.channels // 2) + self.level_embed[i]).reshape(batch, -1, self.channels)
            for i, v in enumerate(level_valid)
        ], axis=1)  # [B, S, D] float32
        ratios = jnp.stack([valid_ratios(v) for v in level_valid], axis=1)  # [B, L, 2]
        reference_points = encoder_reference_points(spatial_shapes, ratios)
        value_padding = None
        if image_sizes is not None:
            value_padding = ~jnp.concatenate([v.reshape(batch, -1) for v in level_valid], axis=1)
        x = jnp.concatenate([m.reshape(batch, -1, self.channels) for m in maps], axis=1)
        if self.remat:
            x = self._encode_rematerialized(x, pos, reference_points, spatial_shapes, value_padding)
        else:
            for layer in self.layers:
                x = layer(x, pos, reference_points, spatial_shapes, value_padding)
        out, start = {}, 0
        for level, (h, w) in zip(self.out_levels, spatial_shapes):
            out[level] = x[:, start:start + h * w].reshape(batch, h, w, self.channels)
            start += h * w
        return out

    def _encode_rematerialized(self, x, pos, reference_points, spatial_shapes, padding_mask):
        """The layers as one ``lax.scan`` over their stacked weights, each step under
        ``jax.checkpoint``: only the ``[B, S, D]`` input of every layer is kept for the
        backward pass, the rest is recomputed there.

        A scan rather than ``nnx.remat`` per unrolled layer because XLA:CPU merges the
        recomputation with the forward's (CSE) and keeps it alive anyway: measured on
        the DefEnc-P2 encoder at 2×400², unrolled 7.76 GiB of temporaries, unrolled with
        ``nnx.remat`` 7.51 GiB, scan 6.45 GiB, scan with checkpoint 1.73 GiB. The stack
        is a copy of the (small) layer weights; the parameter tree is unchanged.
        """
        def apply(layer, x):
            return layer(x, pos, reference_points, spatial_shapes, padding_mask)

        return rematerialized_scan(self.layers, apply, x)
