"""How many cells of an object's RoI grid need refining: COCO against the synthetic data.

EffSeg (thesis section 5.3.3) refines, at stage s = 1..3, the cells of the 14·2^(s−1) grid it
selects and splits each into four; a cell needs refining when it holds both foreground and
background (its refinement target, the thesis's "cell holds fg and bg": 0 < v < 1 with v
the ground truth averaged over the cell, as the author's code's RoIAlign of the stride-1
mask). The thesis's budget, K = 10,000 cells per image for up to 100 detections, is about
ρ = 100 cells per RoI and stage (``selected_per_roi``). Whether that covers an outline
depends on how long the outline is in cells: this script counts, per ground-truth object
(its box as the RoI), the cells of the 14², 28², 56² and 112² grids with 0 < v < 1, on
any COCO-format instance annotations, so the synthetic data can be set beside COCO's.

    python benchmarks/boundary_cells.py \\
        coco=../shared/data/coco_mini/annotations/instances_train2017.json \\
        large=data/shapes_large/val/instances.json [--min-area 9216] [--markdown]

Objects below ``--min-area`` pixels (default 96², COCO's "large") and crowd regions are
skipped. Pure numpy and pycocotools; no model.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

GRIDS = (14, 28, 56, 112)


def axis_weights(start: float, length: float, cells: int, pixels: int) -> np.ndarray:
    """``[cells, pixels]``: the share of each pixel ``[p, p + 1)`` in each of ``cells`` equal
    cells of ``[start, start + length)``, divided by the cell length (rows average)."""
    edges = start + np.arange(cells + 1) * (length / cells)
    p = np.arange(pixels, dtype=np.float64)
    overlap = np.clip(np.minimum(edges[1:, None], p[None] + 1) - np.maximum(edges[:-1, None], p[None]), 0, None)
    return overlap / (length / cells)


def cell_coverage(mask: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """``[size, size]``: the mean of the binary ``mask`` over each cell of the ``size²`` grid on
    ``box`` ``(x, y, w, h)`` pixels (exact area average)."""
    x, y, w, h = box
    wy = axis_weights(y, h, size, mask.shape[0])
    wx = axis_weights(x, w, size, mask.shape[1])
    return wy @ mask.astype(np.float64) @ wx.T


def mixed_cells(annotation_file: str, min_area: float, grids=GRIDS) -> np.ndarray:
    """``[objects, len(grids)]``: the cells with 0 < v < 1 of every object at least ``min_area``
    pixels (not crowd) of a COCO instance annotation file."""
    from pycocotools import mask as mask_utils

    with open(annotation_file) as f:
        data = json.load(f)
    images = {im["id"]: im for im in data["images"]}
    counts = []
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0) or ann["area"] < min_area:
            continue
        image = images[ann["image_id"]]
        height, width = image["height"], image["width"]
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        mask = mask_utils.decode(rle)
        x, y, w, h = ann["bbox"]
        if w < 1 or h < 1:
            continue
        counts.append([int(np.count_nonzero((v > 1e-6) & (v < 1 - 1e-6)))
                       for v in (cell_coverage(mask, (x, y, w, h), s) for s in grids)])
    return np.array(counts, np.int64).reshape(-1, len(grids))


def table(results: dict[str, np.ndarray], grids=GRIDS) -> str:
    lines = ["| data | objects | " + " | ".join(f"mixed cells {s}² (median / mean / p90)" for s in grids) + " |",
             "|---|---|" + "---|" * len(grids)]
    for name, counts in results.items():
        if len(counts) == 0:
            lines.append(f"| {name} | 0 |" + " – |" * len(grids))
            continue
        cells = [f"{np.median(c):.0f} / {c.mean():.0f} / {np.percentile(c, 90):.0f}" for c in counts.T]
        lines.append(f"| {name} | {len(counts)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", help="NAME=instances.json")
    parser.add_argument("--min-area", type=float, default=96.0 ** 2)
    args = parser.parse_args(argv)
    results = {}
    for item in args.sets:
        name, _, path = item.partition("=")
        if not path:
            parser.error(f"expected NAME=instances.json, got {item!r}")
        results[name] = mixed_cells(path, args.min_area)
    print(f"Objects of at least {args.min_area:.0f} px, their box as the RoI; a mixed cell holds foreground "
          "and background (EffSeg's refinement target).")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
