"""Padding-aware helpers: an image's output must not depend on the padding of its batch.

Batches are padded at the bottom and right to a bucket shape
(:mod:`msvision.data.batching`), but the thesis evaluates at batch size 1 with no
padding. The networks therefore compute, for every image, exactly what they would
on the image alone:

* a feature map of stride ``s`` has ``ceil(h / s) × ceil(w / s)`` valid cells
  (:func:`valid_sizes`; every stride-2 layer maps ``n`` to ``ceil(n / 2)``);
* an operation that mixes positions (a k×k convolution, pooling, attention
  values, bilinear sampling) sees zeros outside the valid cells, the zero padding
  the unpadded network would apply (:func:`mask_padding`, applied to the input of
  such operations; pointwise operations may leave anything in the padding);
* normalisation statistics are taken over valid cells only
  (:class:`msvision.models.layers.GroupNorm`);
* resizing between levels maps each image's valid map onto its valid map, with
  PyTorch's ``F.interpolate(size=...)`` rules (:func:`resize_bilinear`,
  :func:`resize_nearest`), not the padded shapes.

``image_sizes`` is always ``[B, 2] int32`` ``(h, w)`` of the images inside the
padding, in input pixels (``Batch.image_sizes``); ``None`` everywhere means "no
padding" (every cell valid) and turns these helpers into the plain operations.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def valid_sizes(image_sizes: Array, stride) -> Array:
    """``ceil(image_sizes / stride)``: valid cells of a stride-``stride`` map (int)."""
    return (image_sizes + stride - 1) // stride


def padding_mask(image_sizes: Optional[Array], shape_hw: Sequence[int], stride: int) -> Optional[Array]:
    """``[B, H, W, 1] bool``: True on the valid cells of a ``shape_hw`` map of stride ``stride``.

    ``None`` when ``image_sizes`` is ``None``.
    """
    if image_sizes is None:
        return None
    sizes = valid_sizes(jnp.asarray(image_sizes, jnp.int32), stride)
    h, w = int(shape_hw[0]), int(shape_hw[1])
    rows = jnp.arange(h)[None, :, None] < sizes[:, 0, None, None]
    cols = jnp.arange(w)[None, None, :] < sizes[:, 1, None, None]
    return (rows & cols)[..., None]


def apply_mask(x: Array, mask: Optional[Array]) -> Array:
    """``x`` with zeros where ``mask`` (broadcastable, bool) is False; ``x`` if ``mask`` is None."""
    return x if mask is None else jnp.where(mask, x, jnp.zeros((), x.dtype))


def mask_padding(x: Array, image_sizes: Optional[Array], stride: int) -> Array:
    """``x: [B, H, W, C]`` (stride ``stride``) with zeros outside each image's valid cells."""
    return apply_mask(x, padding_mask(image_sizes, x.shape[1:3], stride))


def _sizes_or_full(sizes: Optional[Array], batch: int, full: Sequence[int]) -> Array:
    if sizes is None:
        return jnp.broadcast_to(jnp.asarray(full, jnp.int32), (batch, 2))
    return jnp.asarray(sizes, jnp.int32)


def _gather_rows(x: Array, index: Array, axis: int) -> Array:
    """Per-image gather along ``axis`` (1 or 2) of ``x [B, H, W, C]`` with ``index [B, n]``."""
    return jax.vmap(lambda xb, ib: jnp.take(xb, ib, axis=axis - 1))(x, index)


def _linear_taps(out_len: int, in_size: Array, out_size: Array) -> tuple[Array, Array, Array]:
    """torch ``align_corners=False`` bilinear source taps, per image.

    Returns ``(i0 [B, out_len], i1 [B, out_len], frac [B, out_len] float32)``.
    """
    scale = in_size.astype(jnp.float32) / jnp.maximum(out_size, 1).astype(jnp.float32)  # [B]
    src = (jnp.arange(out_len, dtype=jnp.float32)[None] + 0.5) * scale[:, None] - 0.5
    src = jnp.maximum(src, 0.0)
    last = jnp.maximum(in_size - 1, 0)[:, None]
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), last)
    i1 = jnp.minimum(i0 + 1, last)
    return i0, i1, src - i0.astype(jnp.float32)


def resize_bilinear(x: Array, out_hw: Sequence[int], in_sizes: Optional[Array] = None,
                    out_sizes: Optional[Array] = None) -> Array:
    """Per-image ``F.interpolate(x_valid, size=out_valid, mode='bilinear', align_corners=False)``.

    Args:
      x: ``[B, h, w, C]``.
      out_hw: static output shape ``(H, W)``.
      in_sizes: ``[B, 2]`` int valid ``(h, w)`` of each image in ``x``; None = ``(h, w)``.
      out_sizes: ``[B, 2]`` int valid output size of each image; None = ``(H, W)``.

    Returns:
      ``[B, H, W, C]``; cells beyond ``out_sizes`` hold unspecified values. Reads
      only cells within ``in_sizes``. Half-pixel centres, edge samples clamped, no
      antialiasing (torch's defaults).
    """
    b, h, w, _ = x.shape
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if (out_h, out_w) == (h, w) and in_sizes is None and out_sizes is None:
        return x
    in_s = _sizes_or_full(in_sizes, b, (h, w))
    out_s = _sizes_or_full(out_sizes, b, (out_h, out_w))
    dtype = x.dtype
    y0, y1, fy = _linear_taps(out_h, in_s[:, 0], out_s[:, 0])
    fy = fy.astype(dtype)[:, :, None, None]
    rows = _gather_rows(x, y0, 1) * (1 - fy) + _gather_rows(x, y1, 1) * fy
    x0, x1, fx = _linear_taps(out_w, in_s[:, 1], out_s[:, 1])
    fx = fx.astype(dtype)[:, None, :, None]
    return _gather_rows(rows, x0, 2) * (1 - fx) + _gather_rows(rows, x1, 2) * fx


def _nearest_taps(out_len: int, in_size: Array, out_size: Array) -> Array:
    """torch ``mode='nearest'`` source index ``floor(i · in / out)`` (exact), per image ``[B, out_len]``."""
    i = jnp.arange(out_len, dtype=jnp.int32)[None]
    idx = (i * in_size[:, None]) // jnp.maximum(out_size, 1)[:, None]
    return jnp.minimum(idx, jnp.maximum(in_size - 1, 0)[:, None])


def resize_nearest(x: Array, out_hw: Sequence[int], in_sizes: Optional[Array] = None,
                   out_sizes: Optional[Array] = None) -> Array:
    """Per-image ``F.interpolate(x_valid, size=out_valid, mode='nearest')`` (arguments as
    :func:`resize_bilinear`)."""
    b, h, w, _ = x.shape
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if (out_h, out_w) == (h, w) and in_sizes is None and out_sizes is None:
        return x
    if in_sizes is None and out_sizes is None:  # one static index for the batch: a plain gather
        rows = (jnp.arange(out_h) * h) // out_h
        cols = (jnp.arange(out_w) * w) // out_w
        return x[:, rows][:, :, cols]
    in_s = _sizes_or_full(in_sizes, b, (h, w))
    out_s = _sizes_or_full(out_sizes, b, (out_h, out_w))
    rows = _gather_rows(x, _nearest_taps(out_h, in_s[:, 0], out_s[:, 0]), 1)
    return _gather_rows(rows, _nearest_taps(out_w, in_s[:, 1], out_s[:, 1]), 2)


def resize_between_strides(x: Array, out_hw: Sequence[int], image_sizes: Optional[Array], in_stride: int,
                           out_stride: int, method: str = "bilinear") -> Array:
    """Resizes a stride-``in_stride`` map onto a stride-``out_stride`` map image by image.

    The valid map of each image (``ceil(size / stride)``) is resized onto its valid
    map at the other stride; with ``image_sizes=None`` the whole arrays are
    resized. ``method``: 'bilinear' | 'nearest'.
    """
    fn = {"bilinear": resize_bilinear, "nearest": resize_nearest}[method]
    if image_sizes is None:
        return fn(x, out_hw)
    sizes = jnp.asarray(image_sizes, jnp.int32)
    return fn(x, out_hw, valid_sizes(sizes, in_stride), valid_sizes(sizes, out_stride))
