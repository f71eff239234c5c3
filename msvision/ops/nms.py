"""Padded, tiled non-maximum suppression with a fixed number of outputs.

Greedy NMS with the result of ``torchvision.ops.nms``: boxes are visited in order
of descending score (ties: lower input index first, as torchvision's stable
sort), and a box is dropped when its IoU with an already kept box is strictly
greater than the threshold.

Algorithm (the blocked scheme of TensorFlow's ``non_max_suppression_padded``):
the score-sorted boxes are cut into tiles of ``tile_size``. Tile ``i`` is first
suppressed by the final kept boxes of every earlier tile (one ``[T, T]`` IoU block
at a time), then by itself: the within-tile greedy result is the unique fixed
point of ``keep[b] = keep0[b] and not any(keep[a] and iou[a, b] > t for a < b)``,
reached by iterating that update (the first ``p`` entries are exact after ``p``
iterations; in practice a handful). Tiles are processed in a ``while_loop`` that
stops early once ``max_outputs`` boxes are kept. Memory is ``O(N + T**2)``; all
shapes are static, so the functions jit and vmap (one image per call; vmap for
batches).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def _tile_iou(a: Array, b: Array) -> Array:
    """``[T, 4] x [S, 4] -> [T, S]`` IoU, the same arithmetic as torchvision's kernel."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = jnp.maximum(jnp.minimum(a[:, None, 2], b[None, :, 2]) - jnp.maximum(a[:, None, 0], b[None, :, 0]), 0.0)
    h = jnp.maximum(jnp.minimum(a[:, None, 3], b[None, :, 3]) - jnp.maximum(a[:, None, 1], b[None, :, 1]), 0.0)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    # union == 0 (degenerate pair) gives NaN in torchvision, i.e. no suppression.
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def _nms_core(
    boxes: Array,
    scores: Array,
    labels: Optional[Array],
    iou_threshold: float,
    max_outputs: int,
    valid: Optional[Array],
    tile_size: int,
) -> tuple[Array, Array]:
    n = boxes.shape[0]
    if n == 0:
        return jnp.zeros((max_outputs,), jnp.int32), jnp.zeros((max_outputs,), bool)
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)

    # Descending score, ties by ascending index; invalid entries last.
    neg = jnp.where(valid, -scores, jnp.inf)
    _, order = jax.lax.sort((neg, jnp.arange(n, dtype=jnp.int32)), num_keys=2)

    tile = max(1, min(int(tile_size), n))
    num_tiles = -(-n // tile)
    pad = num_tiles * tile - n
    sboxes = jnp.pad(boxes[order], ((0, pad), (0, 0))).reshape(num_tiles, tile, 4)
    svalid = jnp.pad(valid[order], (0, pad)).reshape(num_tiles, tile)
    if labels is not None:
        slabels = jnp.pad(jnp.asarray(labels, jnp.int32)[order], (0, pad)).reshape(num_tiles, tile)
    else:
        slabels = jnp.zeros((num_tiles, tile), jnp.int32)

    upper = jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]  # a < b

    def overlap(i, j):
        """``[T, T]`` bool: box a of tile j would suppress box b of tile i."""
        iou = _tile_iou(sboxes[j], sboxes[i])
        return (iou > iou_threshold) & (slabels[j][:, None] == slabels[i][None, :])

    def tile_body(state):
        i, keep, num_kept = state
        keep_i = keep[i]

        def by_earlier_tile(j, keep_i):
            suppressed = jnp.any(keep[j][:, None] & overlap(i, j), axis=0)
            return keep_i & ~suppressed

        keep_i = jax.lax.fori_loop(0, i, by_earlier_tile, keep_i)

        self_overlap = overlap(i, i) & upper
        keep0 = keep_i

        def fixed_point_body(carry):
            current, _ = carry
            new = keep0 & ~jnp.any(current[:, None] & self_overlap, axis=0)
            return new, jnp.any(new != current)

        keep_i, _ = jax.lax.while_loop(lambda c: c[1], fixed_point_body, (keep0, jnp.array(True)))
        keep = keep.at[i].set(keep_i)
        return i + 1, keep, num_kept + jnp.sum(keep_i, dtype=jnp.int32)

    def tile_cond(state):
        i, _, num_kept = state
        return (i < num_tiles) & (num_kept < max_outputs)

    last, keep, _ = jax.lax.while_loop(tile_cond, tile_body, (jnp.int32(0), svalid, jnp.int32(0)))
    # Tiles after an early exit were never processed: drop them.
    keep = keep & (jnp.arange(num_tiles)[:, None] < last)
    keep = keep.reshape(-1)

    (positions,) = jnp.nonzero(keep, size=max_outputs, fill_value=0)
    keep_valid = jnp.arange(max_outputs) < jnp.sum(keep)
    order = jnp.pad(order, (0, pad))
    indices = jnp.where(keep_valid, order[positions], 0).astype(jnp.int32)
    return indices, keep_valid


def nms_padded(
    boxes: Array,
    scores: Array,
    iou_threshold: float,
    max_outputs: int,
    *,
    valid: Optional[Array] = None,
    tile_size: int = 256,
) -> tuple[Array, Array]:
    """Greedy NMS with a fixed number of outputs (one image).

    Args:
      boxes: ``[N, 4]`` float ``(x0, y0, x1, y1)`` in pixels.
      scores: ``[N]`` float.
      iou_threshold: a box is suppressed by a kept box of IoU ``> iou_threshold``.
      max_outputs: static number of output slots.
      valid: optional ``[N]`` bool; invalid boxes are never kept and never suppress.
      tile_size: boxes per tile (memory ``O(tile_size**2)`` per block).

    Returns:
      indices: ``[max_outputs]`` int32 indices into ``boxes`` of the kept boxes, by
        descending score (``torchvision.ops.nms(...)[:max_outputs]``); 0 in unused
        slots.
      keep_valid: ``[max_outputs]`` bool, True for the first
        ``min(num_kept, max_outputs)`` slots.
    """
    return _nms_core(boxes, scores, None, iou_threshold, max_outputs, valid, tile_size)


def batched_nms_padded(
    boxes: Array,
    scores: Array,
    labels: Array,
    iou_threshold: float,
    max_outputs: int,
    *,
    valid: Optional[Array] = None,
    tile_size: int = 256,
) -> tuple[Array, Array]:
    """Class-aware NMS: boxes with different ``labels [N] int`` never suppress each other.

    Same result as ``torchvision.ops.batched_nms`` (which shifts boxes of each label
    by an offset); here the IoU test is masked by label equality, which is exact
    for any coordinate range. Arguments and outputs as :func:`nms_padded`.
    """
    return _nms_core(boxes, scores, labels, iou_threshold, max_outputs, valid, tile_size)
