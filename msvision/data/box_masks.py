"""Box-frame instance masks: a fixed-size coverage grid over each object's box.

Training a RoI mask head needs, per object, the mask near its box only: the targets
are sampled inside predicted boxes that overlap the object (thesis §5.3.3). Padding
full-image masks to ``[B, M, H, W]`` costs ``M·H·W`` bytes per image (COCO scale:
100 × 1408² = 198 MB per image); a ``S × S`` grid over the tight box of each mask
costs ``M·S²`` (1.6 MB at S = 128), independent of the image size.

:func:`box_frame_masks` crops every mask to the tight box of its pixels and resizes
the crop to ``S × S`` by area averaging (PIL's box filter), storing the fraction of
each grid cell covered by the mask as ``uint8`` 0..255. Outside its box a mask is
zero by construction, so nothing is lost there; inside, objects larger than S pixels
are represented at S cells per side with exact cell coverages (the thesis head
supervises at most 112 cells per side).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

COVERAGE_SCALE = 255.0


def box_frame_masks(masks: np.ndarray, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Box-frame coverage grids of instance masks.

    Args:
      masks: ``[n, h, w]`` bool full-image masks.
      size: S, cells per side of every grid.

    Returns:
      frames ``[n, 4]`` float32 ``(x0, y0, x1, y1)``: the tight pixel box of each mask
      (pixel (i, j) covers ``[j, j+1) × [i, i+1)``; zeros for an empty mask), and
      coverage ``[n, S, S]`` uint8: cell (i, j) holds ``round(255 · covered fraction)``
      of the i-th row / j-th column of the S × S split of the frame.
    """
    masks = np.asarray(masks, bool)
    n = masks.shape[0]
    frames = np.zeros((n, 4), np.float32)
    coverage = np.zeros((n, size, size), np.uint8)
    for k in range(n):
        rows = np.flatnonzero(masks[k].any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(masks[k].any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        frames[k] = (x0, y0, x1, y1)
        crop = Image.fromarray(masks[k, y0:y1, x0:x1].astype(np.float32), mode="F")
        resized = np.asarray(crop.resize((size, size), Image.Resampling.BOX), np.float32)
        coverage[k] = np.clip(np.rint(resized * COVERAGE_SCALE), 0, 255).astype(np.uint8)
    return frames, coverage
