"""Window bookkeeping of the Swin Transformer: partition, relative positions, masks.

Swin's (shifted) window attention, as mmdet's ``ShiftWindowMSA`` computes it on one
image alone: the token map (``v_h × v_w`` valid cells) is zero-padded at the
bottom/right to ``P_h × P_w``, multiples of the window size ``ws``; shifted blocks
roll it by ``-shift`` and only let tokens of the same *region* attend to each other
(the rolled-over strips form their own regions, ``region_mask``); then windows of
``ws × ws`` tokens attend independently.

In a padded batch (canvas ``H × W`` at this stride, ``H ≥ v_h``) every image gets
the same result when (:func:`key_valid_windows`) the keys of tokens beyond its
padded map ``P_h × P_w`` are masked out and the canvas is padded to multiples of
``ws`` and rolled as a whole: along each axis, the canvas groups restricted to
``[0, P)`` are the image's groups (``[0, s)``, ``[s, ws + s)``, …, ``[P - ws + s, P)``,
the last one closed by ``P`` in the image and by the masked keys in the canvas;
``[0, s)`` is cut off from the rest by the region mask in both), and relative
positions inside a group are the same. Tokens between the valid map and ``P`` must
be zero (after ``norm1``) as the image's zero padding is; the caller does that.

Token order inside a window is row-major (``index = row · ws + col``), windows are
row-major over the map: the official implementation's ``window_partition``.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# mmdet / official Swin add -100 to the logits of other regions (not -inf).
REGION_MASK_VALUE = -100.0


def padded_length(n: int, window_size: int) -> int:
    """``n`` rounded up to a multiple of ``window_size``."""
    return -(-n // window_size) * window_size


def window_partition(x: Array, window_size: int) -> Array:
    """``[B, H, W, C]`` (``H``, ``W`` multiples of ``ws``) → ``[B, nW, ws·ws, C]``, windows row-major."""
    b, h, w, c = x.shape
    ws = window_size
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def window_reverse(windows: Array, window_size: int, height: int, width: int) -> Array:
    """Inverse of :func:`window_partition`: ``[B, nW, ws·ws, C]`` → ``[B, H, W, C]``."""
    b, _, _, c = windows.shape
    ws = window_size
    x = windows.reshape(b, height // ws, width // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


@functools.lru_cache(maxsize=None)
def relative_position_index(window_size: int) -> np.ndarray:
    """``[N, N] int32`` (``N = ws²``): row of the ``[(2ws-1)², heads]`` bias table for each
    (query, key) pair of a window, as the official ``relative_position_index`` buffer:
    ``(dy + ws - 1) · (2ws - 1) + (dx + ws - 1)`` with ``(dy, dx) = query - key``."""
    ws = window_size
    coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")).reshape(2, -1)  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # [2, N, N]
    return (rel[0] * (2 * ws - 1) + rel[1]).astype(np.int32)


def _region_labels(length: int, window_size: int, shift: int) -> Array:
    """Region of each position of a rolled axis of ``length`` cells: mmdet's slices
    ``[0, L - ws)``, ``[L - ws, L - s)``, ``[L - s, L)`` → 0, 1, 2."""
    i = jnp.arange(length)
    return (i >= length - window_size).astype(jnp.int32) + (i >= length - shift).astype(jnp.int32)


def region_mask(height: int, width: int, window_size: int, shift: int) -> Array:
    """``[nW, N, N] bool``: True where query and key of a window of the rolled
    ``height × width`` map (multiples of ``ws``) lie in the same region (the mask of
    mmdet's ``ShiftWindowMSA``, computed on that map). Built from iotas, so a large
    map does not become a large constant of the compiled program."""
    rows = _region_labels(height, window_size, shift)
    cols = _region_labels(width, window_size, shift)
    labels = (rows[:, None] * 3 + cols[None, :])[None, :, :, None]  # [1, H, W, 1]
    windows = window_partition(labels, window_size)[0, :, :, 0]  # [nW, N]
    return windows[:, :, None] == windows[:, None, :]


def key_valid_windows(valid_hw: Array, height: int, width: int, window_size: int, shift: int) -> Array:
    """``[B, nW, N] bool``: True for the keys inside each image's padded map.

    Args:
      valid_hw: ``[B, 2] int`` valid cells ``(v_h, v_w)`` of each image at this stride.
      height, width: the canvas, multiples of ``ws``, rolled by ``-shift``.

    A token at rolled position ``(i, j)`` comes from ``((i + s) mod H, (j + s) mod W)``;
    it is a valid key when that lies within ``ceil(v / ws) · ws`` on both axes
    (the image's own zero padding to the window size is part of its computation).
    """
    padded = -(-valid_hw // window_size) * window_size  # [B, 2]
    rows = (jnp.arange(height) + shift) % height
    cols = (jnp.arange(width) + shift) % width
    ok = (rows[None, :, None] < padded[:, 0, None, None]) & (cols[None, None, :] < padded[:, 1, None, None])
    return window_partition(ok[..., None], window_size)[..., 0]


def attention_bias(
    table: Array, window_size: int, height: int, width: int, shift: int, valid_hw: Optional[Array]
) -> tuple[Array, Optional[Array], Optional[Array]]:
    """The additive terms of the window logits ``[B, nW, heads, N, N]``.

    Returns ``(relative_bias [heads, N, N], region_bias [nW, N, N] or None,
    key_valid [B, nW, N] bool or None)`` for a canvas ``height × width`` (multiples of
    ``ws``) rolled by ``-shift``; ``table: [(2ws-1)², heads]``.
    """
    n = window_size * window_size
    index = relative_position_index(window_size).reshape(-1)
    relative = jnp.take(table, jnp.asarray(index), axis=0).reshape(n, n, -1).transpose(2, 0, 1)
    region = None
    if shift > 0:
        region = jnp.where(region_mask(height, width, window_size, shift), 0.0, REGION_MASK_VALUE)
    keys = None if valid_hw is None else key_valid_windows(valid_hw, height, width, window_size, shift)
    return relative, region, keys
