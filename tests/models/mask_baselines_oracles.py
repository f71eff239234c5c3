"""Numpy oracles written from the definitions, and the target fixture, shared by the ++ baseline tests."""

import numpy as np

from msvision.structures import Batch

CANVAS = 64
IMAGE_SIZES = np.array([[64, 64], [50, 58]], np.int32)


# --- numpy definitions -------------------------------------------------------------------------


def np_grid_sample(grid, x, y):
    """``grid_sample(align_corners=False, zeros)`` of ``grid [S, S]`` at (x, y) in [0, 1]², float64 loops."""
    size = grid.shape[0]
    out = np.zeros(len(x))
    for n, (px, py) in enumerate(zip(x, y)):
        u, v = px * size - 0.5, py * size - 0.5
        j0, i0 = int(np.floor(u)), int(np.floor(v))
        for i, wy in ((i0, 1 - (v - i0)), (i0 + 1, v - i0)):
            for j, wx in ((j0, 1 - (u - j0)), (j0 + 1, u - j0)):
                if 0 <= i < size and 0 <= j < size:
                    out[n] += wy * wx * grid[i, j]
    return out


def np_upsample2x(a):
    """``F.interpolate(scale_factor=2, mode='bilinear', align_corners=False)`` of ``a [S, S]``."""
    size = a.shape[0]

    def taps(o):
        src = max((o + 0.5) / 2 - 0.5, 0.0)
        i0 = min(int(np.floor(src)), size - 1)
        return i0, min(i0 + 1, size - 1), src - i0

    out = np.zeros((2 * size, 2 * size))
    for oi in range(2 * size):
        i0, i1, fy = taps(oi)
        for oj in range(2 * size):
            j0, j1, fx = taps(oj)
            out[oi, oj] = ((1 - fy) * ((1 - fx) * a[i0, j0] + fx * a[i0, j1])
                           + fy * ((1 - fx) * a[i1, j0] + fx * a[i1, j1]))
    return out


def np_bilinear_tv(m, y, x):
    """torchvision RoIAlign's ``bilinear_interpolate`` of ``m`` at broadcast (y, x) (mask pixel
    coordinates): zero beyond [-1, size], clamped to the border inside."""
    h, w = m.shape
    y, x = np.broadcast_arrays(np.asarray(y, np.float64), np.asarray(x, np.float64))
    outside = (y < -1) | (y > h) | (x < -1) | (x > w)
    y, x = np.maximum(y, 0.0), np.maximum(x, 0.0)
    yl, xl = np.floor(y).astype(int), np.floor(x).astype(int)
    y = np.where(yl >= h - 1, h - 1.0, y)
    x = np.where(xl >= w - 1, w - 1.0, x)
    yl, xl = np.minimum(yl, h - 1), np.minimum(xl, w - 1)
    yh, xh = np.minimum(yl + 1, h - 1), np.minimum(xl + 1, w - 1)
    ly, lx = y - yl, x - xl
    value = ((1 - ly) * (1 - lx) * m[yl, xl] + (1 - ly) * lx * m[yl, xh] + ly * (1 - lx) * m[yh, xl]
             + ly * lx * m[yh, xh])
    return np.where(outside, 0.0, value)


def np_crop_resize(mask, box, size=28, samples=8):
    """Crop-and-resize of a binary mask to the box's size² grid: the mean of samples² aligned
    RoIAlign samples per cell (pixel centres at +0.5); binarise with >= 0.5 (mmdet)."""
    x0, y0, x1, y1 = np.asarray(box, np.float64) - 0.5
    steps = (np.arange(size)[:, None] + (np.arange(samples)[None, :] + 0.5) / samples).reshape(-1)
    y = y0 + steps * (y1 - y0) / size
    x = x0 + steps * (x1 - x0) / size
    values = np_bilinear_tv(mask, y[:, None], x[None, :])
    return values.reshape(size, samples, size, samples).mean(axis=(1, 3))


def target_case():
    yy, xx = np.mgrid[:CANVAS, :CANVAS]
    masks = np.zeros((2, 2, CANVAS, CANVAS), bool)
    masks[0, 0] = (xx - 20) ** 2 + (yy - 25) ** 2 < 15 ** 2
    masks[0, 1] = (xx > 30) & (yy > 5) & (xx - 30 < 30 - (yy - 5))
    masks[1, 1] = (np.abs(xx - 30) < 4) | (np.abs(yy - 20) < 3)
    masks[1, 1, 50:] = False  # outside image 1 (50 × 58): padding holds no mask
    masks[1, 1, :, 58:] = False
    boxes = np.array([[[5.3, 9.6, 36.2, 41.7], [28.4, 3.1, 62.8, 33.9], [2.2, 2.5, 40.6, 44.3]],
                      [[22.7, 14.1, 47.4, 38.8], [7.9, 3.3, 56.2, 47.6], [25.1, 10.4, 49.9, 39.2]]], np.float32)
    gt = np.array([[0, 1, 0], [1, 1, 1]], np.int32)
    batch = Batch(images=np.zeros((2, CANVAS, CANVAS, 3), np.uint8), image_sizes=IMAGE_SIZES, orig_sizes=IMAGE_SIZES,
                  image_ids=np.arange(2, dtype=np.int32), boxes=np.zeros((2, 2, 4), np.float32),
                  labels=np.array([[2, 0], [1, 2]], np.int32), valid=np.ones((2, 2), bool),
                  is_crowd=np.zeros((2, 2), bool), masks=masks)
    return batch, boxes, gt
