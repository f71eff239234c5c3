"""RoIAlign, multi-level RoIAlign, bilinear point sampling and RoI mask targets (EffSeg, thesis ch. 5).

All functions are pure, jit-friendly and channels-last (NHWC).

- :func:`roi_align`: torchvision's ``roi_align`` (NCHW there) for a fixed sampling ratio,
  including the ``aligned=True`` half-pixel offset and torchvision's border rules.
- :func:`multilevel_roi_align`: every RoI sampled from its own pyramid level (eq. 5.1) in
  ONE flattened gather: the levels are viewed as one row table ``[sum_l B*H_l*W_l, C]``
  and every RoI computes its rows with its own level's offset, size and scale. No level
  is sampled for RoIs that do not live on it.
- :func:`roi_levels`: the Mask R-CNN level rule, thesis eq. (5.1).
- :func:`sample_bilinear` / :func:`multilevel_sample_bilinear`: ``grid_sample(bilinear,
  zeros, align_corners=False)`` at points, for the neck fusion at cell centres (thesis §5.3.3),
  with the corner weights of :mod:`msvision.ops.bilinear` (as MSDA's XLA path).
- :func:`roi_mask_targets`: the EffSeg per-cell ground-truth values v (as the author's
  ``EffSegHead.compute_losses``, DetSeg ``models/heads/seg/effseg.py``) from boolean masks
  without converting them to float.
- :func:`roi_mask_centre_values`: the ground truth sampled at the cell centres (the
  thesis's segmentation targets, §5.3.3).

Deviation: the released code uses mmcv RoIAlign with adaptive
sampling (``sampling_ratio=0``: ceil(roi_size / output_size) samples per bin, a
data-dependent count); static shapes need a fixed ``sampling_ratio`` (default 2).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from msvision.ops.bilinear import bilinear_corner_list

__all__ = [
    "roi_align",
    "multilevel_roi_align",
    "roi_levels",
    "sample_bilinear",
    "multilevel_sample_bilinear",
    "roi_mask_targets",
    "roi_mask_centre_values",
    "roi_align_macs",
]


class _AxisSamples:
    """Bilinear taps along one axis for every sample of every RoI (torchvision rules).

    low, high: int32 [..., out * sr] neighbouring pixel indices (clamped into the map).
    w_low, w_high: float32 [..., out * sr] weights, zero for samples outside [-1, size].
    """

    def __init__(self, start, bin_size, size, output_size: int, sampling_ratio: int):
        index = jnp.arange(output_size * sampling_ratio, dtype=jnp.float32)
        cell = jnp.floor(index / sampling_ratio)
        sub = index - cell * sampling_ratio
        coord = start[..., None] + cell * bin_size[..., None] + (sub + 0.5) * bin_size[..., None] / sampling_ratio
        size = size[..., None].astype(jnp.float32)
        outside = (coord < -1.0) | (coord > size)  # torchvision: "empty" sample -> 0
        coord = jnp.maximum(coord, 0.0)
        low = jnp.floor(coord)
        at_edge = low >= size - 1.0
        low = jnp.where(at_edge, size - 1.0, low)
        high = jnp.where(at_edge, size - 1.0, low + 1.0)
        coord = jnp.where(at_edge, low, coord)
        frac = coord - low
        self.low = low.astype(jnp.int32)
        self.high = high.astype(jnp.int32)
        self.w_low = jnp.where(outside, 0.0, 1.0 - frac)
        self.w_high = jnp.where(outside, 0.0, frac)


def _roi_align_rows(table, row_offset, height, width, boxes, spatial_scale, output_size: int,
                    sampling_ratio: int, aligned: bool, pitch=None):
    """Shared RoIAlign core on a row table.

    Args:
        table: [N, C] any dtype; the map of RoI i is rows ``row_offset[i] + y * pitch[i] + x``.
        row_offset, height, width: int32 [...R] per RoI; (height, width) is the map size the
            border rules use (an image's valid map inside a padded one).
        pitch: int32 [...R] row length of the stored map (default ``width``).
        boxes: [...R, 4] float, (x0, y0, x1, y1) in input pixels.
        spatial_scale: float or [...R] float, map pixels per input pixel.

    Returns:
        [...R, out, out, C] float32 (float64 for float64 tables).
    """
    compute = jnp.promote_types(table.dtype, jnp.float32) if jnp.issubdtype(table.dtype, jnp.floating) \
        else jnp.float32
    boxes = boxes.astype(compute)
    scale = jnp.asarray(spatial_scale, compute)
    offset = 0.5 if aligned else 0.0
    x0 = boxes[..., 0] * scale - offset
    y0 = boxes[..., 1] * scale - offset
    roi_w = boxes[..., 2] * scale - offset - x0
    roi_h = boxes[..., 3] * scale - offset - y0
    if not aligned:  # torchvision: force malformed RoIs to be 1x1
        roi_w = jnp.maximum(roi_w, 1.0)
        roi_h = jnp.maximum(roi_h, 1.0)
    ys = _AxisSamples(y0, roi_h / output_size, height, output_size, sampling_ratio)
    xs = _AxisSamples(x0, roi_w / output_size, width, output_size, sampling_ratio)

    row0 = row_offset[..., None, None]
    w = (width if pitch is None else pitch)[..., None, None]
    total = None
    # One gather per bilinear corner, summed elementwise so XLA fuses the four gathers
    # and never materialises the [..., 4, C] corner samples.
    for y_idx, y_w in ((ys.low, ys.w_low), (ys.high, ys.w_high)):
        for x_idx, x_w in ((xs.low, xs.w_low), (xs.high, xs.w_high)):
            rows = row0 + y_idx[..., :, None] * w + x_idx[..., None, :]
            weight = (y_w[..., :, None] * x_w[..., None, :]).astype(compute)
            term = weight[..., None] * table.at[rows].get(mode="promise_in_bounds").astype(compute)
            total = term if total is None else total + term
    lead = total.shape[:-3]
    channels = total.shape[-1]
    total = total.reshape(*lead, output_size, sampling_ratio, output_size, sampling_ratio, channels)
    return jnp.mean(total, axis=(-4, -2))


def roi_align(features: jax.Array, boxes: jax.Array, output_size: int, spatial_scale: float,
              sampling_ratio: int = 2, aligned: bool = True) -> jax.Array:
    """RoIAlign with torchvision's semantics for a fixed sampling ratio.

    Args:
        features: [B, H, W, C] float (NHWC).
        boxes: [B, R, 4] float, (x0, y0, x1, y1) in input-image pixels.
        output_size: static int, the output is ``output_size x output_size`` bins.
        spatial_scale: map pixels per input pixel (1 / stride).
        sampling_ratio: static int >= 1, samples per bin along each axis.
        aligned: subtract half a pixel from the scaled box (pixel-centre model, Detectron2).

    Returns:
        [B, R, output_size, output_size, C] in float32 (float64 for float64 features).
        Bin (i, j) is row i (y), column j (x). A sample outside [-1, H] x [-1, W] is
        zero; samples in [-1, 0) are clamped to the border (torchvision's rules).
    """
    if sampling_ratio < 1:
        raise ValueError("adaptive sampling (sampling_ratio <= 0) has a data-dependent shape")
    batch, height, width, channels = features.shape
    rois = boxes.shape[1]
    table = features.reshape(batch * height * width, channels)
    row_offset = jnp.broadcast_to((jnp.arange(batch, dtype=jnp.int32) * (height * width))[:, None], (batch, rois))
    h = jnp.full((batch, rois), height, jnp.int32)
    w = jnp.full((batch, rois), width, jnp.int32)
    return _roi_align_rows(table, row_offset, h, w, boxes, spatial_scale, output_size, sampling_ratio, aligned)


def roi_levels(boxes: jax.Array, min_level: int = 2, max_level: int = 5, canonical_size: float = 56.0,
               eps: float = 1e-6) -> jax.Array:
    """Pyramid level of every RoI, thesis eq. (5.1).

    k0 = min_level + clip(floor(log2(sqrt(w h) / canonical_size + eps)), 0, max_level - min_level).
    With the defaults that is ``2 + min(floor(log2(sqrt(wh)/56)), 3)`` clamped to >= 2; the
    ``eps`` and the lower clamp come from the released code (mmdet ``SingleRoIExtractor.map_roi_levels``,
    as configured in DetSeg's EffSeg head): sqrt(wh) < 112 -> P2,
    < 224 -> P3, < 448 -> P4, else P5.

    Args:
        boxes: [..., 4] float, (x0, y0, x1, y1) in pixels.

    Returns:
        [...] int32 pyramid level (the key of the level in the pyramid dict).
    """
    boxes = boxes.astype(jnp.float32)
    area = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    # log2(0) = -inf -> floor -inf -> clamped to the finest level.
    level = jnp.floor(jnp.log2(jnp.sqrt(area) / canonical_size + eps))
    level = jnp.clip(level, 0, max_level - min_level)
    return (min_level + level).astype(jnp.int32)


def _pyramid_table(pyramid: Mapping[int, jax.Array], levels: jax.Array):
    """Concatenate the levels into one row table and look up each RoI's level geometry.

    Returns (table [sum_l B*H_l*W_l, C], keys, per-RoI (level_offset, height, width,
    scale)), the per-RoI arrays shaped like ``levels`` ([B, N]). Level values outside
    the pyramid's keys are clamped to the nearest key.
    """
    keys = sorted(int(k) for k in pyramid)
    if keys != list(range(keys[0], keys[-1] + 1)):
        raise ValueError(f"pyramid levels must be consecutive integers, got {keys}")
    maps = [pyramid[k] for k in keys]
    batch, channels = maps[0].shape[0], maps[0].shape[-1]
    for k, m in zip(keys, maps):
        if m.ndim != 4 or m.shape[0] != batch or m.shape[-1] != channels:
            raise ValueError(f"pyramid level {k} has shape {m.shape}; expected [{batch}, H, W, {channels}]")
    # One copy of the pyramid per call: O(sum_l B H_l W_l C), the price of a single gather.
    table = jnp.concatenate([m.reshape(-1, channels) for m in maps], axis=0)
    levels = jnp.clip(levels.astype(jnp.int32), keys[0], keys[-1])
    start = 0
    offset = jnp.zeros(levels.shape, jnp.int32)
    height = jnp.zeros(levels.shape, jnp.int32)
    width = jnp.zeros(levels.shape, jnp.int32)
    scale = jnp.zeros(levels.shape, jnp.float32)
    b = jnp.arange(batch, dtype=jnp.int32).reshape((batch,) + (1,) * (levels.ndim - 1))
    for k, m in zip(keys, maps):
        _, h, w, _ = m.shape
        on_level = levels == k
        offset = jnp.where(on_level, start + b * (h * w), offset)
        height = jnp.where(on_level, h, height)
        width = jnp.where(on_level, w, width)
        scale = jnp.where(on_level, 2.0 ** -k, scale)
        start += batch * h * w
    return table, offset, height, width, scale


def multilevel_roi_align(pyramid: Mapping[int, jax.Array], boxes: jax.Array, levels: jax.Array,
                         output_size: int, sampling_ratio: int = 2, aligned: bool = True,
                         image_sizes: jax.Array | None = None) -> jax.Array:
    """RoIAlign of every RoI on its own pyramid level, as one flattened gather.

    Args:
        pyramid: {level k: [B, H_k, W_k, C]} NHWC maps of stride 2^k (spatial scale 2^-k),
            consecutive integer keys (e.g. 2..5).
        boxes: [B, R, 4] float, (x0, y0, x1, y1) in input pixels.
        levels: [B, R] int32 pyramid level of every RoI (e.g. :func:`roi_levels`);
            values outside the pyramid's keys are clamped to the nearest key.
        output_size, sampling_ratio, aligned: as :func:`roi_align`.
        image_sizes: optional [B, 2] int (h, w) of each image inside the padding (input
            pixels). The border rules then apply at the image's valid map,
            ceil(h / 2^k) x ceil(w / 2^k) cells, so an image's RoI features do not depend
            on its batch's padding (``msvision/ops/padding.py``).

    Returns:
        [B, R, output_size, output_size, C] float32; equal to ``roi_align(pyramid[k], ...,
        spatial_scale=2^-k)`` for each RoI's level k (on the valid map with ``image_sizes``).

    Cost: one concatenated copy of the pyramid (sum_l B H_l W_l C elements) plus
    4 * sampling_ratio^2 * B R out^2 C gathered elements; no RoI touches another level.
    """
    if sampling_ratio < 1:
        raise ValueError("adaptive sampling (sampling_ratio <= 0) has a data-dependent shape")
    table, offset, height, width, scale = _pyramid_table(pyramid, levels)
    pitch = width
    if image_sizes is not None:
        height, width = _valid_map_size(image_sizes, levels, height, width, min(int(k) for k in pyramid),
                                        max(int(k) for k in pyramid))
    return _roi_align_rows(table, offset, height, width, boxes, scale, output_size, sampling_ratio, aligned,
                           pitch=pitch)


def _valid_map_size(image_sizes, levels, height, width, min_level: int, max_level: int):
    """Per-RoI valid map size ceil(size / 2^k), at most the stored size. [B, R] int32 each."""
    stride = jnp.left_shift(1, jnp.clip(levels.astype(jnp.int32), min_level, max_level))
    sizes = jnp.asarray(image_sizes, jnp.int32).reshape((image_sizes.shape[0],) + (1,) * (levels.ndim - 1) + (2,))
    valid_h = (sizes[..., 0] + stride - 1) // stride
    valid_w = (sizes[..., 1] + stride - 1) // stride
    return jnp.minimum(valid_h, height), jnp.minimum(valid_w, width)


def sample_bilinear(features: jax.Array, points: jax.Array) -> jax.Array:
    """``grid_sample(bilinear, padding_mode="zeros", align_corners=False)`` at points.

    Args:
        features: [B, H, W, C] float (NHWC).
        points: [B, N, 2] float, (x, y) normalised to the map: (0, 0) the top-left
            corner, (1, 1) the bottom-right corner, pixel (i, j) centred at
            ((j + 0.5) / W, (i + 0.5) / H). Outside corners contribute zero.

    Returns:
        [B, N, C] float32 (float64 for float64 features).
    """
    return multilevel_sample_bilinear({0: features}, points, jnp.zeros(points.shape[:-1], jnp.int32))


def multilevel_sample_bilinear(pyramid: Mapping[int, jax.Array], points: jax.Array,
                               levels: jax.Array) -> jax.Array:
    """:func:`sample_bilinear` where every point reads its own pyramid level (one gather).

    Args:
        pyramid: {level k: [B, H_k, W_k, C]}.
        points: [B, N, 2] float, (x, y) normalised to the sampled level's map (see
            :func:`sample_bilinear`). EffSeg's neck fusion (DetSeg ``EffSegHead``) normalises by the padded
            image size; pass ``xy_pixels / (2^k * (H_k, W_k))`` to match exactly.
        levels: [B, N] int32 level key of every point (e.g. k_s = max(k0 - s, 2), eq. (5.2)).

    Returns:
        [B, N, C] float32 (float64 for float64 maps).
    """
    table, offset, height, width, _ = _pyramid_table(pyramid, levels)
    compute = jnp.promote_types(table.dtype, jnp.float32)
    points = points.astype(compute)
    total = None
    for corner in bilinear_corner_list(points[..., 0], points[..., 1], height.astype(compute),
                                       width.astype(compute)):
        # bilinear_corner_list builds y * W + x from float sizes; recompute in int32.
        rows = offset + corner.pixel_index.astype(jnp.int32)
        term = corner.weight.astype(compute)[..., None] * table.at[rows].get(mode="promise_in_bounds").astype(compute)
        total = term if total is None else total + term
    return total


def roi_mask_targets(masks: jax.Array, boxes: jax.Array, mask_index: jax.Array, mask_stride: float = 1.0,
                     output_size: int = 112, num_scales: int = 4,
                     image_sizes: jax.Array | None = None) -> tuple[jax.Array, ...]:
    """EffSeg per-cell ground-truth values v at 112^2, 56^2, 28^2, 14^2.

    v at 112^2 is a RoIAlign (aligned, 2 x 2 samples per cell) of the ground-truth mask
    of each RoI; coarser grids are 2 x 2 average pools of it, i.e. RoIAligns with 4 x 4,
    8 x 8, 16 x 16 samples per cell. The code's targets (DetSeg
    ``EffSegHead.compute_losses``) are ``v > 0.5`` (segmentation) and ``0 < v < 1``
    (refinement: the cell holds fg and bg). The code uses mmcv's adaptive sampling at
    every resolution; this is a fixed-sample version (static shapes).

    Args:
        masks: [B, M, Hm, Wm] bool (or uint8 / float) ground-truth masks, at full image
            resolution (``mask_stride=1``) or reduced (pixel (i, j) of the mask covers
            image pixels [j s, (j+1) s) x [i s, (i+1) s) for stride s).
        boxes: [B, R, 4] float, (x0, y0, x1, y1) in input-image pixels.
        mask_index: [B, R] int32, the ground-truth mask of each RoI in [0, M) (padding
            RoIs may point anywhere in range; mask them downstream).
        mask_stride: image pixels per mask pixel.
        output_size: finest grid (112 for EffSeg).
        num_scales: number of grids returned, each half the previous.
        image_sizes: optional [B, 2] int (h, w) of each image inside the padding (input
            pixels); the border rules then apply at the image's own mask size
            ceil(size / mask_stride), not at the padded ``(Hm, Wm)``.

    Returns:
        ``num_scales`` arrays [B, R, S, S] float32 with S = output_size / 2^i.

    Memory and cost: the masks are gathered in their own dtype (bool: 1 byte per pixel;
    never converted to a float copy, which would be 4x larger); the only float buffers
    are the outputs and the fused [B, R, 2*out, 2*out] sample values
    (B R 4 out^2 floats: 20 MB at R = 100, out = 112). Gathers:
    16 B R out^2 mask pixels, independent of the mask resolution. A full-resolution
    800 x 1333 ground truth for 100 objects costs 107 MB as bool per image; passing it at
    stride 4 costs 6.7 MB with slightly smoother v near the boundary.
    """
    batch, num_masks, mask_h, mask_w = masks.shape
    table = masks.reshape(-1, 1)
    b = jnp.arange(batch, dtype=jnp.int32)[:, None]
    row_offset = (b * num_masks + mask_index.astype(jnp.int32)) * (mask_h * mask_w)
    h = jnp.full(mask_index.shape, mask_h, jnp.int32)
    w = jnp.full(mask_index.shape, mask_w, jnp.int32)
    pitch = w
    if image_sizes is not None:
        sizes = jnp.ceil(jnp.asarray(image_sizes, jnp.float32) / mask_stride).astype(jnp.int32)
        h = jnp.minimum(h, sizes[:, None, 0])
        w = jnp.minimum(w, sizes[:, None, 1])
    finest = _roi_align_rows(table, row_offset, h, w, boxes, 1.0 / mask_stride, output_size, 2, True,
                             pitch=pitch)[..., 0]
    values = [finest]
    for _ in range(num_scales - 1):
        v = values[-1]
        s = v.shape[-1] // 2
        values.append(v.reshape(*v.shape[:-2], s, 2, s, 2).mean(axis=(-3, -1)))
    return tuple(values)


def roi_mask_centre_values(masks: jax.Array, boxes: jax.Array, mask_index: jax.Array, output_size: int,
                           mask_stride: float = 1.0, image_sizes: jax.Array | None = None) -> jax.Array:
    """The ground-truth mask sampled at the centre of every cell of an S x S RoI grid (thesis §5.3.3).

    Cell (i, j) of a RoI (x0, y0, x1, y1) is centred at
    ``(x0 + (j + 0.5) w / S, y0 + (i + 0.5) h / S)``; its value is the mask pixel that
    contains that point (pixel (a, b) of a stride-s mask covers image pixels
    [b s, (b+1) s) x [a s, (a+1) s)), zero outside the mask (or, with ``image_sizes``,
    outside the image's own ceil(size / s) region).

    Args:
        masks: [B, M, Hm, Wm] bool / uint8 / float ground-truth masks.
        boxes: [B, R, 4] float, (x0, y0, x1, y1) in input-image pixels.
        mask_index: [B, R] int32 mask of each RoI in [0, M).
        output_size: static S.
        mask_stride: image pixels per mask pixel.
        image_sizes: optional [B, 2] int (h, w) of the images inside the padding.

    Returns:
        [B, R, S, S] float32 mask values (0/1 for boolean masks); row i is y.
    """
    batch, num_masks, mask_h, mask_w = masks.shape
    boxes = boxes.astype(jnp.float32)
    centre = (jnp.arange(output_size, dtype=jnp.float32) + 0.5) / output_size
    xs = (boxes[..., 0:1] + centre * (boxes[..., 2:3] - boxes[..., 0:1])) / mask_stride  # [B, R, S]
    ys = (boxes[..., 1:2] + centre * (boxes[..., 3:4] - boxes[..., 1:2])) / mask_stride
    col = jnp.floor(xs).astype(jnp.int32)
    row = jnp.floor(ys).astype(jnp.int32)
    limit_h = jnp.full((batch, 1, 1), mask_h, jnp.int32)
    limit_w = jnp.full((batch, 1, 1), mask_w, jnp.int32)
    if image_sizes is not None:
        sizes = jnp.ceil(jnp.asarray(image_sizes, jnp.float32) / mask_stride).astype(jnp.int32)
        limit_h = jnp.minimum(limit_h, sizes[:, 0].reshape(batch, 1, 1))
        limit_w = jnp.minimum(limit_w, sizes[:, 1].reshape(batch, 1, 1))
    col_ok = (col >= 0) & (col < limit_w)
    row_ok = (row >= 0) & (row < limit_h)
    b = jnp.arange(batch, dtype=jnp.int32)[:, None, None, None]
    m = mask_index.astype(jnp.int32)[..., None, None]
    values = masks[b, m, jnp.clip(row, 0, mask_h - 1)[..., :, None], jnp.clip(col, 0, mask_w - 1)[..., None, :]]
    inside = row_ok[..., :, None] & col_ok[..., None, :]
    return jnp.where(inside, values.astype(jnp.float32), 0.0)


def roi_align_macs(num_rois: int, output_size: int, channels: int, sampling_ratio: int = 2) -> int:
    """Analytic RoIAlign cost: 4 * sr^2 * numel(out) multiply-adds (the author's FLOP
    handle for mmcv RoIAlign, DetSeg ``utils/flops.py``, ``roi_align_mmcv_flop_jit``)."""
    return 4 * sampling_ratio ** 2 * num_rois * output_size * output_size * channels
