"""RoI features of the mask heads: the multi-level RoIAlign of eq. (5.1) and the query
fusion (thesis §5.3.3; the ++ baselines take both from EffSeg, §5.4.1; released code:
``EffSegHead``, DetSeg ``models/heads/seg/effseg.py``).

- :func:`multilevel_roi_features`: RoIAlign of every RoI from P_k0,
  k0 = 2 + min(⌊log2(√(wh)/56)⌋, 3) (eq. (5.1), P2–P5), border rules at each image's
  valid map (padding-aware, :mod:`msvision.ops.padding`).
- :class:`QueryFusion`: ``x += 1×1(ReLU(1×1([ReLU(Linear(q)), x])))`` (the released code's form).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.layers import TwoLayerMLP, torch_linear
from msvision.ops.roi_align import multilevel_roi_align, roi_levels

Array = jax.Array


def multilevel_roi_features(pyramid: Mapping[int, Array], boxes: Array, image_sizes: Array, output_size: int,
                            level_range: tuple[int, int] = (2, 5), canonical_size: float = 56.0,
                            sampling_ratio: int = 2) -> tuple[Array, Array]:
    """RoIAlign (``aligned=True``) of every RoI on its eq. (5.1) level.

    Args:
      pyramid: ``{level: [B, H_l, W_l, C]}`` neck maps (at least ``level_range``).
      boxes: ``[B, R, 4]`` float32 ``(x0, y0, x1, y1)`` padded-input pixels.
      image_sizes: ``[B, 2]`` int (h, w) of the images inside the padding.
      output_size: S; level_range: (first, last) level of eq. 5.1; canonical_size: its 56;
      sampling_ratio: samples per bin and axis (fixed: mmcv's adaptive count is data-dependent).

    Returns:
      ``features [B, R, S, S, C]`` float32 and ``levels [B, R]`` int32 (k0).
    """
    first, last = level_range
    k0 = roi_levels(boxes, first, last, canonical_size)  # [B, R], eq. 5.1
    x = multilevel_roi_align({l: pyramid[l] for l in range(first, last + 1)}, boxes, k0, output_size,
                             sampling_ratio, True, image_sizes=jnp.asarray(image_sizes, jnp.int32))
    return x, k0


class QueryFusion(nnx.Module):
    """Fuses each RoI's query into its RoI features (thesis §5.3.3; the released code's layers).

    ``q' = ReLU(Linear_{D→F}(q))``; ``x += 1×1_{F→F}(ReLU(1×1_{2F→F}([q', x])))`` with
    ``q'`` broadcast over the cells. 1×1 convolutions are linear layers on the channels.
    """

    def __init__(self, features: int, query_dim: int, *, dtype=None, rngs: nnx.Rngs):
        self.query_proj = torch_linear(query_dim, features, dtype=dtype, rngs=rngs)
        self.fuse = TwoLayerMLP(2 * features, features, features, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, queries: Array) -> Array:
        """``x: [N, S, S, F]``, ``queries: [N, D]`` → ``[N, S, S, F]``."""
        q = jax.nn.relu(self.query_proj(queries))
        q = jnp.broadcast_to(q[:, None, None, :].astype(x.dtype), x.shape[:-1] + q.shape[-1:])
        return x + self.fuse(jnp.concatenate([q, x], axis=-1)).astype(x.dtype)


__all__ = ["multilevel_roi_features", "QueryFusion"]
