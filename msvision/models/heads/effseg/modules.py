"""Networks of the EffSeg head (thesis 5.3.3, figure 5.3; released code: ``EffSegHead``,
DetSeg ``models/heads/seg/effseg.py``, and ``IdConv2d``, DetSeg ``models/modules/sps.py``).

Every layer is a PyTorch-default ``nn.Linear`` (the released EffSeg sets no init of its
own) except the FCN convolutions (mmcv ``ConvModule``: kaiming-normal fan-out, zero
bias) and the IdConv weights (kaiming-uniform a=√5 on the ``[out, 9·in]`` matrix, i.e.
U(±1/√(9·in)), as ``IdConv2d``). The segmentation / refinement logits come from
:class:`~msvision.models.layers.TwoLayerMLP` (``Linear → ReLU → Linear``); the query fusion
is shared by the mask heads (:class:`~msvision.models.heads.roi_mask.QueryFusion`).

- :class:`ChildNetwork`: the 4 child MLPs of a split cell (thesis §5.3.3; as the released
  code, one ``Linear(F, 4F)`` whose four F-slices go through one shared ``Linear(F, F)``).
- :class:`NeckFusion`: ``act += Linear(ReLU(Linear([act, key])))`` (thesis §5.3.3).
- :class:`ProcessingModule`: table 5.7's processing modules on the active cells (thesis §5.3.3).
- :func:`sine_position_encoding`: the released code's position encoding of the RoI cells.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.layers import TwoLayerMLP, torch_linear
from msvision.ops.sps import id_conv, sfm
from msvision.ops.sps.reference import dense_conv3x3, dense_map

Array = jax.Array
Dtype = Any

PROCESSING_MODULES = ("mlp", "conv", "deform_conv", "sfm", "dense_sfm")


class ChildNetwork(nnx.Module):
    """``child_c = parent + Linear_{F→F}(ReLU(Linear_{F→4F}(parent))[c·F:(c+1)·F])`` (thesis §5.3.3)."""

    def __init__(self, features: int, *, dtype=None, rngs: nnx.Rngs):
        self.expand = torch_linear(features, 4 * features, dtype=dtype, rngs=rngs)
        self.out = torch_linear(features, features, dtype=dtype, rngs=rngs)

    def __call__(self, parents: Array) -> Array:
        """``parents: [..., K, F]`` → children ``[..., 4K, F]`` (child c of parent r at row 4r + c)."""
        *lead, k, f = parents.shape
        hidden = jax.nn.relu(self.expand(parents)).reshape(*lead, k, 4, f)
        children = parents[..., :, None, :] + self.out(hidden).astype(parents.dtype)
        return children.reshape(*lead, 4 * k, f)


class NeckFusion(nnx.Module):
    """``act += Linear_{F→F}(ReLU(Linear_{F+C→F}([act, key])))`` (thesis §5.3.3)."""

    def __init__(self, features: int, key_features: int, *, dtype=None, rngs: nnx.Rngs):
        self.fuse = TwoLayerMLP(features + key_features, features, features, dtype=dtype, rngs=rngs)

    def __call__(self, act: Array, key: Array) -> Array:
        return act + self.fuse(jnp.concatenate([act, key.astype(act.dtype)], axis=-1)).astype(act.dtype)


def sine_position_encoding(size: int, features: int, temperature: float = 1e4) -> Array:
    """``[size, size, features]`` float32 encoding of cell centres ``((j + ½)/size, (i + ½)/size)``.

    The released code's ``SinePosEncoder2d`` (DetSeg ``models/modules/position.py``):
    coordinates scaled by 2π, periods ``temperature^(4k / features)`` for
    ``k < features / 4``, channels ``[sin x, cos x, sin y, cos y]`` (``features / 4`` each).
    """
    if features % 4:
        raise ValueError(f"the position encoding needs a multiple of 4 features, got {features}")
    centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * (2 * math.pi)
    periods = temperature ** (4 * jnp.arange(features // 4, dtype=jnp.float32) / features)
    angles = centres[:, None] / periods[None, :]  # [size, F/4]
    enc_x = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [size(x), F/2]
    enc_y = enc_x
    return jnp.concatenate([jnp.broadcast_to(enc_x[None, :, :], (size, size, features // 2)),
                            jnp.broadcast_to(enc_y[:, None, :], (size, size, features // 2))], axis=-1)


class ProcessingModule(nnx.Module):
    """Updates the active features of one SPS stage (thesis §5.3.3; table 5.7).

    Every module is ``Linear–ReLU → core → Linear–ReLU → Linear–ReLU`` without a
    residual (as the released code); the core reads the 3×3 neighbours of each active cell through the
    id map, passives (the transitioned features, not passed through the first linear,
    as the released code) and a zero vector outside the RoI included:

    - ``'sfm'``: Σ_{d in dilations} ReLU(IdConv3×3_d) (RefineMask's SFM, the default);
    - ``'dense_sfm'``: the same weights applied densely (every cell of every RoI is
      active, table 5.7's DenseSFM; the head then selects every cell);
    - ``'conv'``: ReLU(IdConv3×3, dilation 1);
    - ``'deform_conv'``: ReLU of a deformable 3×3 convolution: an IdConv (zero-initialised)
      predicts an (x, y) offset per tap in cells, every tap reads the bilinear
      interpolation of the four cells around its offset position through the id map
      (mmcv ``DeformConv2d`` semantics on the SPS map);
    - ``'mlp'``: ReLU(Linear_{4F→F}(ReLU(Linear_{F→4F}))): a pointwise core (no neighbours).

    The layers of the table-5.7 alternatives are not published; these are
    reconstructions, checked against table 5.7's parameter counts of the whole model
    (FQDet, ``configs/effseg/r50_fpn_fqdet_effseg_*.py``): SFM 38.81 M (38.8), MLP with the
    4F hidden layer 38.40 M (38.4; Σ_d of pointwise branches would give 38.29 M), Conv
    38.42 M (38.5), DeformConv 38.46 M (38.5), DenseSFM 38.81 M (38.9).
    """

    def __init__(self, features: int, kind: str = "sfm", dilations: Sequence[int] = (1, 3, 5),
                 sfm_impl: str = "auto", *, dtype=None, rngs: nnx.Rngs):
        if kind not in PROCESSING_MODULES:
            raise ValueError(f"processing module must be one of {PROCESSING_MODULES}, got {kind!r}")
        self.kind = kind
        self.features = features
        self.sfm_impl = sfm_impl
        self.dilations = tuple(int(d) for d in dilations) if kind in ("sfm", "dense_sfm") else (1,)
        self.dtype = dtype
        kw = dict(dtype=dtype, rngs=rngs)
        self.first = torch_linear(features, features, **kw)
        if kind == "mlp":
            self.pointwise = TwoLayerMLP(features, 4 * features, features, **kw)
        else:
            bound = 1.0 / math.sqrt(9 * features)  # kaiming_uniform(a=sqrt(5)) on [out, 9·in]
            shape = (len(self.dilations), 9 * features, features)
            self.conv_weight = nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))
            self.conv_bias = nnx.Param(jax.random.uniform(rngs.params(), shape[::2], jnp.float32, -bound, bound))
        if kind == "deform_conv":
            # mmcv DeformConv2d's offset conv (3x3, 2 per tap), zero-initialised: starts as a conv.
            self.offset_weight = nnx.Param(jnp.zeros((9 * features, 18), jnp.float32))
            self.offset_bias = nnx.Param(jnp.zeros((18,), jnp.float32))
        self.second = torch_linear(features, features, **kw)
        self.third = torch_linear(features, features, **kw)

    def __call__(self, act: Array, pas: Array, id_map: Array, act_xy: Array, act_roi: Array,
                 act_active: Array | None = None) -> Array:
        """One image or a batch (leading dims ``[B]`` on every argument).

        Args:
          act: ``[(B,) A, F]`` active features; pas: ``[(B,) P, F]`` passive features.
          id_map: ``[(B,) R, S, S]`` int32; act_xy: ``[(B,) A, 2]`` int32 (x, y); act_roi: ``[(B,) A]``.
          act_active: optional ``[(B,) A]`` bool; False marks slots that stand for passive
            cells (a per-RoI refinement budget, :class:`EffSegHead`): neighbours read them
            as passives (no first linear) and they are returned unchanged.

        Returns:
          ``[(B,) A, F]`` the new active features.
        """
        h = jax.nn.relu(self.first(act))
        if act_active is not None:
            h = jnp.where(act_active[..., None], h, act.astype(h.dtype))
        if self.kind == "mlp":
            core = jax.nn.relu(self.pointwise(h))
        else:
            dtype = self.dtype or h.dtype
            table = jnp.concatenate([h.astype(dtype), pas.astype(dtype),
                                     jnp.zeros(h.shape[:-2] + (1, h.shape[-1]), dtype)], axis=-2)
            weight = self.conv_weight[...].astype(dtype)
            bias = self.conv_bias[...].astype(dtype)
            fn = {"sfm": self._sfm, "conv": self._sfm, "dense_sfm": self._dense_sfm,
                  "deform_conv": self._deform_conv}[self.kind]
            core_one = lambda *a: fn(*a, weight, bias)  # noqa: E731
            if act.ndim == 3:
                core_one = jax.vmap(core_one)
            core = core_one(table, id_map, act_xy, act_roi)
        h = jax.nn.relu(self.second(core))
        out = jax.nn.relu(self.third(h))
        if act_active is not None:
            out = jnp.where(act_active[..., None], out, act.astype(out.dtype))
        return out

    # --- cores on one image: table [N+1, F], id_map [R, S, S], act_xy [A, 2], act_roi [A] ---

    def _sfm(self, table, id_map, act_xy, act_roi, weight, bias):
        return sfm(table, id_map, act_xy, act_roi, weight, bias, self.dilations, impl=self.sfm_impl)

    def _dense_sfm(self, table, id_map, act_xy, act_roi, weight, bias):
        """Every cell active: the map is ``table[id_map]``, convolved densely (table 5.7's Dense SFM)."""
        dense = dense_map(table, id_map)  # [R, S, S, F]
        total = 0.0
        for i, d in enumerate(self.dilations):
            total = total + jax.nn.relu(dense_conv3x3(dense, weight[i], bias[i], d))
        return total[act_roi, act_xy[:, 1], act_xy[:, 0]]

    def _deform_conv(self, table, id_map, act_xy, act_roi, weight, bias):
        offsets = id_conv(table, id_map, act_xy, act_roi, self.offset_weight[...].astype(table.dtype),
                          self.offset_bias[...].astype(table.dtype), 1)  # [A, 18] (dx, dy) per tap
        samples = deformable_taps(table, id_map, act_xy, act_roi, offsets.reshape(-1, 9, 2))  # [A, 9, F]
        out = jnp.dot(samples.reshape(samples.shape[0], -1), weight[0], precision=jax.lax.Precision.HIGHEST)
        return out + bias[0]


def deformable_taps(table: Array, id_map: Array, act_xy: Array, act_roi: Array, offsets: Array) -> Array:
    """Bilinear samples of the SPS map at the 9 deformed taps of every active cell.

    Tap k of the active at (x, y) reads position ``(x, y) + o_k + offsets[:, k]`` (cells,
    ``o_k`` the 3×3 unit offsets, (ky, kx) row-major): the four surrounding cells are
    looked up in the id map (the pad id, a zero row, outside the RoI grid) and
    interpolated bilinearly (mmcv ``DeformConv2d``: zero outside the map).

    Args:
      table: ``[N + 1, F]`` = [act; pas; 0]; id_map ``[R, S, S]`` int32;
      act_xy ``[A, 2]`` int32 (x, y); act_roi ``[A]`` int32; offsets ``[A, 9, 2]`` float (dx, dy).

    Returns:
      ``[A, 9, F]`` in the table's dtype.
    """
    rois, size, _ = id_map.shape
    pad = table.shape[0] - 1
    unit = jnp.asarray([(kx - 1, ky - 1) for ky in range(3) for kx in range(3)], jnp.float32)  # [9, 2]
    pos = act_xy[:, None, :].astype(jnp.float32) + unit[None] + offsets.astype(jnp.float32)  # [A, 9, 2]
    base = jnp.floor(pos)
    frac = pos - base
    base = base.astype(jnp.int32)
    flat = id_map.reshape(-1)
    total = 0.0
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        x = base[..., 0] + dx
        y = base[..., 1] + dy
        inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
        index = (act_roi[:, None] * size + jnp.clip(y, 0, size - 1)) * size + jnp.clip(x, 0, size - 1)
        ids = jnp.where(inside, flat[index], pad)
        wx = frac[..., 0] if dx else 1.0 - frac[..., 0]
        wy = frac[..., 1] if dy else 1.0 - frac[..., 1]
        total = total + (wx * wy)[..., None].astype(table.dtype) * table[ids]
    return total


__all__ = ["ChildNetwork", "NeckFusion", "ProcessingModule", "sine_position_encoding",
           "deformable_taps", "PROCESSING_MODULES"]
