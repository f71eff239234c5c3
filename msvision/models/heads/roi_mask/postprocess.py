"""Mask post-processing shared by the mask heads: pasting RoI masks into the image and the
mask scoring of thesis eq. (5.3) (thesis §5.3.3; the ++ baselines use it too, §5.4.1).

The released code's version: ``EffSegHead.get_mask_scores`` (DetSeg
``models/heads/seg/effseg.py``) and ``BaseSegHead.compute_segs`` (``models/heads/seg/base.py``).

- :func:`upsample2x`: ×2 bilinear upsampling of RoI logits (``align_corners=False``).
- :func:`paste_masks`: mmdet's ``_do_paste_mask``: every image pixel centre inside
  the image is mapped into the RoI grid and read by bilinear interpolation with zeros
  outside the grid (``grid_sample(align_corners=False)``). Bilinear interpolation is
  separable, so the paste of a ``S × S`` grid into an ``H × W`` image is
  ``Wy · P · Wxᵀ`` with ``Wy [H, S]``, ``Wx [W, S]`` holding at most two non-zero
  interpolation weights per row (:func:`paste_weights`).
- :func:`mask_scores`: eq. 5.3, ``s = s_cls · mean(p | p > 0.5)`` over the pasted
  pixels of the image (the released code's ``Σ p·[p>0.5] / (count + 1e-6)``).
- :func:`score_and_sort`: the detections with their masks, eq. 5.3 scores, re-sorted.

:func:`msvision.evaluation.masks.paste_masks_numpy` is the host version used to write
COCO ``segm`` results at the original image resolution (same interpolation).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from msvision.ops.padding import resize_bilinear
from msvision.structures import Batch, Detections

Array = jax.Array

SCORE_EPS = 1e-6  # the released code's denominator guard (``BaseSegHead``)


@dataclasses.dataclass(frozen=True)
class RoIMaskPostProcess:
    """Inference settings of a mask head (config section ``model.seg_head.inference``).

    ``mask_threshold``: foreground threshold of the probabilities (0.5, the released code's ``mask_thr``);
    ``score_weighting``: multiply the class score by the mean foreground probability
    (eq. 5.3; EffSeg and the ++ baselines); ``paste_chunk``: RoIs pasted at once when
    scoring (memory ``paste_chunk × H × W`` floats per image).
    """

    mask_threshold: float = 0.5
    score_weighting: bool = True
    paste_chunk: int = 10


def upsample2x(logits: Array) -> Array:
    """``[..., S, S]`` → ``[..., 2S, 2S]``, ``F.interpolate(scale_factor=2, mode='bilinear', align_corners=False)``."""
    *lead, size, _ = logits.shape
    flat = logits.reshape(-1, size, size, 1)
    up = resize_bilinear(flat, (2 * size, 2 * size))
    return up.reshape(*lead, 2 * size, 2 * size)


def paste_weights(start: Array, length: Array, size: int, num_pixels: int, first_pixel: Array | int = 0) -> Array:
    """Bilinear interpolation matrix of one axis: ``[..., num_pixels, size]`` float32.

    Pixel ``first_pixel + i`` (centre ``+ 0.5``) maps to grid coordinate
    ``u = (pixel + 0.5 - start) / length · size - 0.5``; its row holds the weights of
    the two grid cells around ``u`` that lie inside ``[0, size)`` (zero padding).

    Args:
      start, length: ``[...]`` float the box's start and extent on this axis (pixels).
    """
    pixel = first_pixel + jnp.arange(num_pixels, dtype=jnp.float32)
    start = jnp.asarray(start, jnp.float32)[..., None]
    length = jnp.maximum(jnp.asarray(length, jnp.float32), 1e-6)[..., None]
    u = (pixel + 0.5 - start) / length * size - 0.5  # [..., num_pixels]
    low = jnp.floor(u)
    frac = u - low
    cells = jnp.arange(size, dtype=jnp.float32)
    w = (jnp.where(cells == low[..., None], 1.0 - frac[..., None], 0.0)
         + jnp.where(cells == low[..., None] + 1.0, frac[..., None], 0.0))
    return w


def paste_masks(probs: Array, boxes: Array, height: int, width: int) -> Array:
    """``probs [K, S, S]`` on the grids of ``boxes [K, 4]`` (pixels) → ``[K, height, width]`` float32."""
    size = probs.shape[-1]
    wy = paste_weights(boxes[:, 1], boxes[:, 3] - boxes[:, 1], size, height)  # [K, H, S]
    wx = paste_weights(boxes[:, 0], boxes[:, 2] - boxes[:, 0], size, width)  # [K, W, S]
    hi = jax.lax.Precision.HIGHEST
    rows = jnp.einsum("khs,kst->kht", wy, probs.astype(jnp.float32), precision=hi)
    return jnp.einsum("kht,kwt->khw", rows, wx, precision=hi)


def mask_scores(probs: Array, boxes: Array, image_size: Array, canvas_hw: tuple[int, int], threshold: float = 0.5,
                chunk: int = 10) -> Array:
    """Mean pasted probability over the predicted foreground pixels of each mask (eq. 5.3).

    Args:
      probs: ``[K, S, S]`` mask probabilities; boxes: ``[K, 4]`` their boxes (pixels).
      image_size: ``[2]`` int (h, w) of the image inside the padded canvas: only its
        pixels count.
      canvas_hw: static (H, W) of the padded canvas.

    Returns:
      ``[K]`` float32 ``Σ p·[p > t] / (Σ [p > t] + 1e-6)`` over the image's pixels.
    """
    height, width = canvas_hw
    inside = (jnp.arange(height)[:, None] < image_size[0]) & (jnp.arange(width)[None, :] < image_size[1])

    def one(args):
        p, box = args
        pasted = paste_masks(p[None], box[None], height, width)[0]
        fg = (pasted > threshold) & inside
        return jnp.sum(jnp.where(fg, pasted, 0.0)) / (jnp.sum(fg) + SCORE_EPS)

    return jax.lax.map(one, (probs, boxes.astype(jnp.float32)), batch_size=max(1, min(chunk, probs.shape[0])))


def _take(x: Array, index: Array) -> Array:
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def score_and_sort(batch: Batch, dets: Detections, probs: Array, mask_boxes: Array,
                   postprocess: RoIMaskPostProcess) -> Detections:
    """``dets`` with ``masks = probs [B, K, S, S]`` on ``mask_boxes [B, K, 4]`` and, with
    ``postprocess.score_weighting``, scores ``s_cls · mean(p | p > 0.5)`` over the pasted
    pixels inside the image (eq. 5.3), re-sorted by score. ``postprocess``: any settings
    with ``score_weighting``, ``mask_threshold`` and ``paste_chunk`` (:class:`RoIMaskPostProcess`,
    or a head's own settings with these fields, as RefineMask++'s)."""
    scores = dets.scores
    if postprocess.score_weighting:
        canvas = tuple(int(v) for v in batch.images.shape[1:3])
        score_fn = functools.partial(mask_scores, canvas_hw=canvas, threshold=postprocess.mask_threshold,
                                     chunk=postprocess.paste_chunk)
        weights = jax.vmap(score_fn)(probs, mask_boxes, jnp.asarray(batch.image_sizes, jnp.int32))  # [B, K]
        scores = jnp.where(dets.valid, dets.scores * weights, 0.0)
    order = jnp.argsort(jnp.where(dets.valid, -scores, jnp.inf), axis=1, stable=True)
    masks = jnp.where(dets.valid[..., None, None], probs, 0.0)
    return Detections(boxes=_take(dets.boxes, order), scores=_take(scores, order),
                      labels=_take(dets.labels, order), valid=_take(dets.valid, order),
                      masks=_take(masks, order), mask_boxes=_take(mask_boxes, order))


__all__ = ["RoIMaskPostProcess", "SCORE_EPS", "upsample2x", "paste_weights", "paste_masks",
           "mask_scores", "score_and_sort"]
