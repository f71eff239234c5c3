"""Swin Transformer backbone (Swin-T/S/B/L), as mmdet's ``SwinTransformer``.

Thesis section 2.4 and table 4.21/4.22: Swin-L initialised from the official
ImageNet-22k 384×384 checkpoint (``swin_large_patch4_window12_384_22k.pth``: window
12, embed 192, depths (2, 2, 18, 2), heads (6, 12, 24, 48)). The author builds it
with mmdet (DetSeg ``configs/mmdet/backbones/swin_l_v0.py``: ``out_indices (1, 2,
3)``, ``drop_path_rate 0.2``, ``patch_norm``, no ``frozen_stages`` so mmdet's -1:
nothing frozen; the whole backbone trains at lr 1e-5,
DetSeg ``scripts/fqdetv2/swl_def_p3_fqdetv2_12e.sh``); the defaults here
are that configuration.

Architecture (mmdet, which matches the official detection code):

* patch embedding: the image is zero-padded at the bottom/right to a multiple of 4,
  a 4×4 stride-4 convolution, LayerNorm (``patch_norm``);
* stage ``i`` (level ``i + 2``, stride ``2^(i+2)``): ``depths[i]`` blocks of
  ``x += W-MSA(LN(x)); x += MLP(LN(x))`` (GELU, hidden ``4·C``), the odd blocks with
  windows shifted by ``ws // 2``; window attention with a learned relative position
  bias (:mod:`msvision.models.backbones.swin_windows`); the token map is zero-padded
  to multiples of the window after ``norm1``. mmdet always shifts (also when the map
  fits in one window); torchvision and the official classification code do not shift
  a map that fits in one window, the only architectural difference;
* patch merging between stages: zero-pad to even sizes, concatenate the 2×2
  neighbours in the official order ``(0,0), (1,0), (0,1), (1,1)`` (torchvision's),
  LayerNorm over ``4C``, linear ``4C → 2C`` without bias;
* a LayerNorm on each returned level (mmdet's ``norm{i}``; not in the ImageNet
  checkpoints, so initialised to 1/0 as mmdet leaves it).

Padding-aware (:mod:`msvision.ops.padding`): with ``image_sizes``, level ``l`` has
``ceil(h / 2^l)`` valid cells, tokens outside them are zeroed before window
attention (after ``norm1``) and before patch merging, and keys beyond each image's
valid map rounded up to the window are masked, so an image's features are those of
the image alone (see :func:`~msvision.models.backbones.swin_windows.key_valid_windows`).

Stochastic depth (``drop_path_rate``, mmdet's rule: rates rising linearly from 0
over all blocks) is applied when ``__call__`` gets an ``rng`` key (the train step
passes one); inference passes none and is deterministic.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msvision.models.backbones.swin_windows import attention_bias, padded_length, window_partition, window_reverse
from msvision.models.layers import Conv2d, Frozen, kaiming_uniform, torch_default_bias
from msvision.ops.padding import mask_padding, valid_sizes

Array = jax.Array

# variant -> (embed_dim, depths, num_heads, window_size of the released checkpoints
# we target: torchvision swin_t/s/b at 224 (7), official Swin-L 22k at 384 (12))
SWIN_SPECS = {
    "T": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "S": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "B": (128, (2, 2, 18, 2), (4, 8, 16, 32), 7),
    "L": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}
PATCH_SIZE = 4
LAYER_NORM_EPS = 1e-5  # torch nn.LayerNorm default (official, mmdet, torchvision)


def _trunc_normal(std: float = 0.02):
    # timm/mmdet trunc_normal_(std=.02) truncates at ±2 (absolute), i.e. ±100 std: a plain normal.
    return nnx.initializers.normal(std)


class Linear(nnx.Module):
    """``y = x @ kernel + bias``; ``kernel: [in, out]`` (``Frozen`` when ``frozen``).

    Computes in ``dtype`` (default: the input's); mmdet's init (trunc-normal 0.02, zero bias).
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, frozen: bool = False,
                 dtype=None, rngs: nnx.Rngs):
        var = Frozen if frozen else nnx.Param
        self.kernel = var(_trunc_normal()(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = var(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        dtype = self.dtype or x.dtype
        y = jnp.matmul(x.astype(dtype), self.kernel[...].astype(dtype))
        return y if self.bias is None else y + self.bias[...].astype(dtype)


class LayerNorm(nnx.Module):
    """``torch.nn.LayerNorm(features, eps=1e-5)`` over the last axis, statistics in ≥ float32."""

    def __init__(self, features: int, *, frozen: bool = False, dtype=None):
        var = Frozen if frozen else nnx.Param
        self.scale = var(jnp.ones((features,), jnp.float32))
        self.bias = var(jnp.zeros((features,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype or x.dtype)


def drop_path(x: Array, rate: float, rng: Optional[Array]) -> Array:
    """Stochastic depth: each sample's residual branch ``x [B, ...]`` is dropped with
    probability ``rate`` and scaled by ``1 / (1 - rate)`` otherwise (timm/mmdet
    ``DropPath``); the identity without ``rng`` or at rate 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)


class WindowAttention(nnx.Module):
    """(Shifted) window multi-head self-attention with relative position bias.

    Attributes: ``qkv`` (``C → 3C``), ``proj`` (``C → C``), ``relative_position_bias_table
    [(2ws-1)², heads]`` (official names).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, *, frozen: bool, dtype, rngs):
        if dim % num_heads:
            raise ValueError(f"Swin: {dim} channels do not split into {num_heads} heads")
        if not 0 <= shift < window_size:
            raise ValueError(f"Swin: shift {shift} must be in [0, window_size={window_size})")
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift = shift
        self.dtype = dtype
        var = Frozen if frozen else nnx.Param
        self.relative_position_bias_table = var(
            _trunc_normal()(rngs.params(), ((2 * window_size - 1) ** 2, num_heads), jnp.float32))
        self.qkv = Linear(dim, 3 * dim, frozen=frozen, dtype=dtype, rngs=rngs)
        self.proj = Linear(dim, dim, frozen=frozen, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, valid_hw: Optional[Array] = None) -> Array:
        """``x: [B, H, W, C]``, zero outside the valid cells → ``[B, H, W, C]``.

        ``valid_hw: [B, 2] int`` valid cells of each image at this stride (None: the
        whole map is the image).
        """
        b, h, w, c = x.shape
        ws, s, heads = self.window_size, self.shift, self.num_heads
        hp, wp = padded_length(h, ws), padded_length(w, ws)
        x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        if s:
            x = jnp.roll(x, (-s, -s), axis=(1, 2))
        windows = window_partition(x, ws)  # [B, nW, N, C]
        nw, n = windows.shape[1], windows.shape[2]
        qkv = self.qkv(windows).reshape(b, nw, n, 3, heads, c // heads)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]  # [B, nW, N, heads, d]
        q = q * (c // heads) ** -0.5
        compute = jnp.promote_types(q.dtype, jnp.float32)  # softmax in >= float32
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k).astype(compute)
        relative, region, keys = attention_bias(self.relative_position_bias_table[...], ws, hp, wp, s, valid_hw)
        logits = logits + relative.astype(compute)
        if region is not None:
            logits = logits + region[None, :, None].astype(compute)
        if keys is not None:
            # Finite: a window wholly outside an image (only garbage queries) stays NaN-free.
            logits = jnp.where(keys[:, :, None, None, :], logits, jnp.asarray(-1e9, compute))
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", attn, v).reshape(b, nw, n, c)
        out = window_reverse(self.proj(out), ws, hp, wp)
        if s:
            out = jnp.roll(out, (s, s), axis=(1, 2))
        return out[:, :h, :w]


class Mlp(nnx.Module):
    """``fc2(GELU(fc1(x)))`` (exact erf GELU, torch's default)."""

    def __init__(self, dim: int, hidden: int, *, frozen: bool, dtype, rngs):
        self.fc1 = Linear(dim, hidden, frozen=frozen, dtype=dtype, rngs=rngs)
        self.fc2 = Linear(hidden, dim, frozen=frozen, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class SwinBlock(nnx.Module):
    """``x += drop(attn(LN(x))); x += drop(mlp(LN(x)))``."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float,
                 drop_path_rate: float, *, frozen: bool, dtype, rngs):
        self.drop_path_rate = float(drop_path_rate)
        self.norm1 = LayerNorm(dim, frozen=frozen, dtype=dtype)
        self.attn = WindowAttention(dim, num_heads, window_size, shift, frozen=frozen, dtype=dtype, rngs=rngs)
        self.norm2 = LayerNorm(dim, frozen=frozen, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), frozen=frozen, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, image_sizes: Optional[Array], stride: int, rng: Optional[Array] = None) -> Array:
        """``x: [B, H, W, C]`` at ``stride``; ``image_sizes [B, 2]`` or None; ``rng`` for stochastic depth."""
        rng_attn, rng_mlp = (None, None) if rng is None else jax.random.split(rng)
        valid_hw = None if image_sizes is None else valid_sizes(jnp.asarray(image_sizes, jnp.int32), stride)
        # The image alone pads with zeros after norm1: zero everything outside it.
        y = mask_padding(self.norm1(x), image_sizes, stride)
        x = x + drop_path(self.attn(y, valid_hw), self.drop_path_rate, rng_attn)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, rng_mlp)


class PatchMerging(nnx.Module):
    """``[B, H, W, C] → [B, ⌈H/2⌉, ⌈W/2⌉, 2C]``: zero-pad to even, 2×2 concat, LN(4C), linear."""

    def __init__(self, dim: int, *, patch_norm: bool, frozen: bool, dtype, rngs):
        self.norm = LayerNorm(4 * dim, frozen=frozen, dtype=dtype) if patch_norm else None
        self.reduction = Linear(4 * dim, 2 * dim, use_bias=False, frozen=frozen, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, image_sizes: Optional[Array], stride: int) -> Array:
        x = mask_padding(x, image_sizes, stride)  # the image alone pads with zeros here
        h, w = x.shape[1:3]
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        # official / torchvision order: (0,0), (1,0), (0,1), (1,1)
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        if self.norm is not None:
            x = self.norm(x)
        return self.reduction(x)


class PatchEmbed(nnx.Module):
    """Zero-pad to a multiple of 4, 4×4 stride-4 conv (``proj``), LayerNorm (``norm``)."""

    def __init__(self, embed_dim: int, *, patch_norm: bool, frozen: bool, dtype, rngs):
        fan_in = 3 * PATCH_SIZE * PATCH_SIZE
        self.proj = Conv2d(3, embed_dim, PATCH_SIZE, PATCH_SIZE, padding=0, kernel_init=kaiming_uniform(math.sqrt(5)),
                           bias_init=torch_default_bias(fan_in), frozen=frozen, dtype=dtype, rngs=rngs)
        self.norm = LayerNorm(embed_dim, frozen=frozen, dtype=dtype) if patch_norm else None

    def __call__(self, images: Array, image_sizes: Optional[Array]) -> Array:
        x = mask_padding(images, image_sizes, 1)
        h, w = x.shape[1:3]
        x = jnp.pad(x, ((0, 0), (0, -h % PATCH_SIZE), (0, -w % PATCH_SIZE), (0, 0)))
        x = self.proj(x)
        return x if self.norm is None else self.norm(x)


class SwinStage(nnx.Module):
    """``depths[i]`` blocks (odd ones shifted) and the patch merging after them (or None)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path_rates: Sequence[float], *, downsample: bool, patch_norm: bool, frozen: bool, dtype, rngs):
        self.blocks = nnx.List([
            SwinBlock(dim, num_heads, window_size, 0 if j % 2 == 0 else window_size // 2, mlp_ratio,
                      drop_path_rates[j], frozen=frozen, dtype=dtype, rngs=rngs)
            for j in range(depth)
        ])
        self.downsample = (
            PatchMerging(dim, patch_norm=patch_norm, frozen=frozen, dtype=dtype, rngs=rngs) if downsample else None
        )


class SwinTransformer(nnx.Module):
    """Swin Transformer feature extractor (mmdet's ``SwinTransformer``).

    Args (the config fields of ``model.backbone`` with ``name: 'swin'``):
      variant: 'T' | 'S' | 'B' | 'L' (:data:`SWIN_SPECS`): embed dim, depths, heads
        and window size; the fields below override them when set.
      out_levels: levels to return, subset of 2..5 (stage ``i`` gives level
        ``i + 2``); the thesis/author use C3–C5 (mmdet ``out_indices (1, 2, 3)``).
        Stages above ``max(out_levels)`` are not built.
      embed_dim: channels of stage 1 (C2); stage ``i`` has ``embed_dim·2^i``.
      depths: blocks per stage (4 values).
      num_heads: attention heads per stage (4 values).
      window_size: window side in tokens; must match the checkpoint's (12 for the
        384×384 ImageNet-22k Swin-L the thesis uses, 7 for torchvision's swin_t/s/b
        and the 224×224 official checkpoints).
      mlp_ratio: MLP hidden size / channels (4).
      patch_norm: LayerNorm after the patch embedding and in patch merging (True).
      drop_path_rate: stochastic depth of the last block (0.2, the author's Swin-L
        value); block ``k`` of ``K`` uses ``rate·k/(K-1)``. Training only (the train
        step's ``rng``).
      frozen_stages: mmdet's rule: -1 trains everything (the author's setting);
        0 freezes the patch embedding; ``k ≥ 1`` also stages 1..k (their blocks,
        output norm and the patch merging that follows them). Frozen weights are
        ``Frozen`` and gradients stop after them.
      dtype: compute dtype; parameters stay float32, LayerNorm statistics and the
        attention softmax are computed in float32.

    Call: ``images [B, H, W, 3]`` (normalised, zero on the padding), optional
    ``image_sizes [B, 2]`` int (h, w) inside the padding, optional ``rng`` (stochastic
    depth) → ``{level: [B, ⌈H/2^l⌉, ⌈W/2^l⌉, C_l]}``, ``C_l = embed_dim·2^(l-2)``.
    """

    def __init__(
        self,
        variant: str = "L",
        *,
        out_levels: Sequence[int] = (3, 4, 5),
        embed_dim: Optional[int] = None,
        depths: Optional[Sequence[int]] = None,
        num_heads: Optional[Sequence[int]] = None,
        window_size: Optional[int] = None,
        mlp_ratio: float = 4.0,
        patch_norm: bool = True,
        drop_path_rate: float = 0.2,
        frozen_stages: int = -1,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if variant not in SWIN_SPECS:
            raise ValueError(f"unknown Swin variant {variant!r}; choose from {sorted(SWIN_SPECS)}")
        spec_dim, spec_depths, spec_heads, spec_window = SWIN_SPECS[variant]
        embed_dim = spec_dim if embed_dim is None else int(embed_dim)
        depths = tuple(spec_depths if depths is None else depths)
        num_heads = tuple(spec_heads if num_heads is None else num_heads)
        window_size = spec_window if window_size is None else int(window_size)
        out_levels = tuple(sorted(out_levels))
        if not out_levels or out_levels[0] < 2 or out_levels[-1] > 5:
            raise ValueError(f"Swin out_levels must be within 2..5, got {out_levels}")
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"Swin depths and num_heads need 4 values, got {depths}, {num_heads}")
        self.variant = variant
        self.out_levels = out_levels
        self.embed_dim = embed_dim
        self.depths = depths
        self.num_heads = num_heads
        self.window_size = window_size
        self.frozen_stages = frozen_stages

        self.patch_embed = PatchEmbed(embed_dim, patch_norm=patch_norm, frozen=frozen_stages >= 0, dtype=dtype,
                                      rngs=rngs)
        num_stages = out_levels[-1] - 1
        rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()  # mmdet: over all 4 stages
        stages = []
        for i in range(num_stages):
            dim = embed_dim * 2**i
            frozen = i + 1 <= frozen_stages
            stages.append(SwinStage(
                dim, depths[i], num_heads[i], window_size, mlp_ratio, rates[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i + 1 < num_stages, patch_norm=patch_norm, frozen=frozen, dtype=dtype, rngs=rngs,
            ))
        self.layers = nnx.List(stages)
        self.out_channels = {i + 2: embed_dim * 2**i for i in range(4) if i + 2 in out_levels}
        # mmdet's output norms norm{stage}; absent for stages that are not returned
        for i in range(4):
            returned = i + 2 in out_levels
            norm = LayerNorm(embed_dim * 2**i, frozen=i + 1 <= frozen_stages, dtype=dtype) if returned else None
            setattr(self, f"norm{i}", norm)

    def output_norm(self, stage: int) -> Optional[LayerNorm]:
        return getattr(self, f"norm{stage}")

    def stage_outputs(self, images: Array, image_sizes: Optional[Array] = None,
                      rng: Optional[Array] = None) -> dict[int, Array]:
        """``{level: [B, h_l, w_l, C_l]}``: every built stage's block output before its
        output norm (torchvision's ``features[2i+1]`` outputs)."""
        x = self.patch_embed(images, image_sizes)
        if self.frozen_stages >= 0:
            x = jax.lax.stop_gradient(x)
        outputs = {}
        stride = PATCH_SIZE
        block_id = 0
        for i, stage in enumerate(self.layers):
            for block in stage.blocks:
                block_rng = None if rng is None else jax.random.fold_in(rng, block_id)
                x = block(x, image_sizes, stride, block_rng)
                block_id += 1
            if i + 1 <= self.frozen_stages:
                x = jax.lax.stop_gradient(x)
            outputs[i + 2] = x
            if stage.downsample is not None:
                x = stage.downsample(x, image_sizes, stride)
                stride *= 2
                if i + 1 <= self.frozen_stages:
                    x = jax.lax.stop_gradient(x)
        return outputs

    def __call__(self, images: Array, image_sizes: Optional[Array] = None,
                 rng: Optional[Array] = None) -> dict[int, Array]:
        outputs = self.stage_outputs(images, image_sizes, rng)
        return {level: self.output_norm(level - 2)(outputs[level]) for level in self.out_levels}
