"""Per-cell mask targets of the RoI grids (thesis §5.3.3; released code:
``EffSegHead.compute_losses``, DetSeg ``models/heads/seg/effseg.py``), used by EffSeg and
RefineMask++; the box-frame mapping also by the Mask R-CNN++ / PointRend++ targets.

Mask targets (per stage s, an S_s × S_s grid, S_s = 14·2^s, over every RoI):

- ``seg_target='centre'`` (thesis §5.3.3, EffSeg's default): the ground-truth mask sampled
  at the cell centre (:func:`~msvision.ops.roi_align.roi_mask_centre_values`);
  ``'average'`` (released code): v > 0.5 with v the RoIAlign average of the
  mask over the cell (:func:`~msvision.ops.roi_align.roi_mask_targets`);
- refinement target (both): the cell holds foreground and background, 0 < v < 1
  (with a margin of ``MIXED_EPS`` for float32 rounding).

Masks come as ``Batch.masks``: full-image ``[B, M, H, W] bool`` on the padded input
grid, or box-frame coverage grids ``[B, M, S, S] uint8`` with ``Batch.mask_boxes``
(:mod:`msvision.data.box_masks`, :func:`into_box_frames`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msvision.ops.roi_align import roi_mask_centre_values, roi_mask_targets

Array = jax.Array

SEG_TARGETS = ("centre", "average")
MIXED_EPS = 1e-4
COVERAGE_SCALE = 255.0  # box-frame grids hold coverage × 255 (msvision.data.box_masks)


def mask_targets(masks: Array, boxes: Array, gt_index: Array, num_stages: int = 3, roi_resolution: int = 14,
                 seg_target: str = "centre", mask_stride: float = 1.0, image_sizes: Array | None = None,
                 mask_boxes: Array | None = None) -> list[tuple[Array, Array]]:
    """Segmentation and refinement targets of every stage.

    Args:
      masks: ``[B, M, Hm, Wm]`` bool ground-truth masks (``Batch.masks``; float
        coverage in [0, 1] also works), pixel (i, j) covering image pixels
        ``[j s, (j+1) s) × [i s, (i+1) s)`` for ``s = mask_stride``; or, with
        ``mask_boxes``, box-frame coverage grids ``[B, M, S, S]`` uint8 (0..255).
      boxes: ``[B, R, 4]`` float RoI boxes ``(x0, y0, x1, y1)`` in input pixels.
      gt_index: ``[B, R]`` int32 mask of each RoI.
      image_sizes: optional ``[B, 2]`` (h, w) of the images inside the padding.
      mask_boxes: optional ``[B, M, 4]`` float the box each box-frame grid covers
        (``Batch.mask_boxes``, :mod:`msvision.data.box_masks`). The grids get a
        one-cell zero border (a mask is zero outside its box) and the RoI boxes are
        mapped into grid cells.

    Returns:
      per stage s = 0..num_stages: ``(seg [B, R, S, S] bool, refine [B, R, S, S] bool)``,
      S = roi_resolution · 2^s.
    """
    if seg_target not in SEG_TARGETS:
        raise ValueError(f"seg_target must be one of {SEG_TARGETS}, got {seg_target!r}")
    boxes = jax.lax.stop_gradient(boxes.astype(jnp.float32))
    scale = 1.0
    if mask_boxes is not None:
        masks, boxes = into_box_frames(masks, mask_boxes, boxes, gt_index)
        mask_stride, image_sizes = 1.0, None
        scale = 1.0 / COVERAGE_SCALE
    finest = roi_resolution * 2 ** num_stages
    averages = roi_mask_targets(masks, boxes, gt_index, mask_stride, finest, num_stages + 1,
                                image_sizes=image_sizes)[::-1]  # coarse to fine
    out = []
    for s, v in enumerate(averages):
        v = v * scale
        if seg_target == "centre":
            size = roi_resolution * 2 ** s
            centre = roi_mask_centre_values(masks, boxes, gt_index, size, mask_stride, image_sizes) * scale
            seg = centre > 0.5
        else:
            seg = v > 0.5
        # 0 < v < 1 up to float32 rounding (bilinear weights of a constant region sum to 1 ± 1 ulp).
        out.append((seg, (v > MIXED_EPS) & (v < 1.0 - MIXED_EPS)))
    return out


def into_box_frames(masks: Array, mask_boxes: Array, boxes: Array, gt_index: Array) -> tuple[Array, Array]:
    """Box-frame grids with a zero border, and the RoI boxes in their cell coordinates.

    Args:
      masks: ``[B, M, S, S]`` box-frame coverage grids; mask_boxes: ``[B, M, 4]`` float the
        box each grid covers; boxes: ``[B, R, 4]`` float RoI boxes (input pixels);
      gt_index: ``[B, R]`` int32 grid of each RoI.

    Returns:
      ``[B, M, S + 2, S + 2]`` grids and ``[B, R, 4]`` boxes in the cells of each RoI's grid.
    """
    size = masks.shape[-1]
    padded = jnp.pad(masks, ((0, 0), (0, 0), (1, 1), (1, 1)))
    frame = jnp.take_along_axis(mask_boxes.astype(jnp.float32), gt_index[..., None], axis=1)  # [B, R, 4]
    origin = frame[..., :2]
    cells_per_pixel = size / jnp.maximum(frame[..., 2:] - frame[..., :2], 1e-6)
    lo = (boxes[..., :2] - origin) * cells_per_pixel + 1.0
    hi = (boxes[..., 2:] - origin) * cells_per_pixel + 1.0
    return padded, jnp.concatenate([lo, hi], axis=-1)


__all__ = ["SEG_TARGETS", "MIXED_EPS", "COVERAGE_SCALE", "mask_targets", "into_box_frames"]
