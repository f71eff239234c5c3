"""``benchmarks/boundary_cells.py``: the cell coverage is the exact area average of the mask."""

import json

import numpy as np

from benchmark_modules import load_benchmark

boundary_cells = load_benchmark("boundary_cells")


def test_coverage_is_the_area_average():
    """Box and cell edges on 1/8 px: averaging the mask supersampled 8x per cell is exact."""
    rng = np.random.default_rng(0)
    mask = rng.random((20, 24)) > 0.5
    x, y, w, h, size = 2.5, 1.25, 18.0, 15.0, 4  # cells 4.5 x 3.75 px
    fine = np.repeat(np.repeat(mask, 8, 0), 8, 1).astype(np.float64)
    expected = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            r0, r1 = int(round((y + i * h / size) * 8)), int(round((y + (i + 1) * h / size) * 8))
            c0, c1 = int(round((x + j * w / size) * 8)), int(round((x + (j + 1) * w / size) * 8))
            expected[i, j] = fine[r0:r1, c0:c1].mean()
    np.testing.assert_allclose(boundary_cells.cell_coverage(mask, (x, y, w, h), size), expected, atol=1e-12)


def test_mixed_cells_of_a_square_and_a_disc(tmp_path):
    """A filled box has no mixed cell on a grid aligned to it; a disc's mixed cells grow about
    linearly with the grid (the outline's length in cells)."""
    from pycocotools import mask as mask_utils

    height = width = 256
    square = np.zeros((height, width), np.uint8)
    square[28:140, 28:140] = 1  # 112 px: every cell of a 14..112 grid is inside
    yy, xx = np.mgrid[:height, :width] + 0.5
    disc = ((yy - 128) ** 2 + (xx - 128) ** 2 <= 100 ** 2).astype(np.uint8)
    anns = []
    for i, m in enumerate((square, disc)):
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        ys, xs = np.nonzero(m)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
        anns.append(dict(id=i + 1, image_id=1, category_id=1, iscrowd=0, area=float(m.sum()), bbox=box,
                         segmentation=rle))
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(dict(images=[dict(id=1, height=height, width=width)], annotations=anns,
                                    categories=[dict(id=1, name="x")])))
    counts = boundary_cells.mixed_cells(str(path), min_area=96 ** 2)
    assert counts.shape == (2, 4)
    np.testing.assert_array_equal(counts[0], 0)
    ratios = counts[1, 1:] / counts[1, :-1]
    assert np.all((ratios > 1.7) & (ratios < 2.3)), counts[1]
