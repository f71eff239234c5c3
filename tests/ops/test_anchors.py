"""Anchors vs hand-written expectations and torchvision's AnchorGenerator."""

import math

import numpy as np
import pytest

from msvision.ops import anchors as A


def test_cell_shapes_order_and_area():
    shapes = A.anchor_cell_shapes([32.0, 64.0], [0.5, 1.0, 2.0])
    assert shapes.shape == (6, 2)
    # size-major, ratio-minor; ratio = h / w; area = size**2
    expected = []
    for s in (32.0, 64.0):
        for r in (0.5, 1.0, 2.0):
            w = s / math.sqrt(r)
            expected.append((w, w * r))
    np.testing.assert_allclose(shapes, expected, rtol=1e-6)
    np.testing.assert_allclose(shapes[:, 0] * shapes[:, 1], np.repeat([32.0**2, 64.0**2], 3), rtol=1e-5)
    np.testing.assert_allclose(shapes[:, 1] / shapes[:, 0], [0.5, 1, 2] * 2, rtol=1e-6)


def test_retinanet_sizes():
    np.testing.assert_allclose(A.retinanet_anchor_sizes(3), [32.0, 40.3175, 50.7968], rtol=1e-4)
    np.testing.assert_allclose(A.retinanet_anchor_sizes(7), [512.0, 645.08, 812.75], rtol=1e-4)


def test_grid_anchors_centres_and_order():
    shapes = A.anchor_cell_shapes([8.0], [1.0, 2.0])
    a = A.grid_anchors((2, 3), 8, shapes)
    assert a.shape == (2 * 3 * 2, 4) and a.dtype == np.float32
    centres = (a[:, :2] + a[:, 2:]) / 2
    # row-major location (y outer, x inner), then cell anchor
    expected = [((x + 0.5) * 8, (y + 0.5) * 8) for y in range(2) for x in range(3) for _ in range(2)]
    np.testing.assert_allclose(centres, expected)
    np.testing.assert_allclose(a[1] - a[0], [-(shapes[1, 0] - 8) / 2, -(shapes[1, 1] - 8) / 2,
                                             (shapes[1, 0] - 8) / 2, (shapes[1, 1] - 8) / 2], rtol=1e-6)
    a0 = A.grid_anchors((2, 3), 8, shapes, offset=0.0)
    np.testing.assert_allclose(a0 + 4.0, a)


def test_pyramid_anchors_levels():
    hws = {4: (2, 2), 3: (4, 4)}
    sizes = {l: A.retinanet_anchor_sizes(l) for l in hws}
    a = A.pyramid_anchors(hws, sizes, (0.5, 1.0, 2.0))
    assert a.shape == ((16 + 4) * 9, 4)
    np.testing.assert_allclose(a[: 16 * 9], A.grid_anchors((4, 4), 8, A.anchor_cell_shapes(sizes[3], (0.5, 1, 2))))
    wh = a[16 * 9, 2:] - a[16 * 9, :2]
    np.testing.assert_allclose(wh, [64 * math.sqrt(2), 64 / math.sqrt(2)], rtol=1e-5)


@pytest.mark.oracle
def test_vs_torchvision_anchor_generator():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes = ((32.0, 40.0, 50.0), (64.0, 80.0, 100.0))
    ratios = (0.5, 1.0, 2.0)
    gen = AnchorGenerator(sizes=sizes, aspect_ratios=(ratios, ratios))
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    feats = [torch.zeros(1, 1, 8, 12), torch.zeros(1, 1, 4, 6)]
    ref = gen(images, feats)[0].numpy()
    # torchvision: offset 0, ratio-major/size-minor cell order, and w = size/sqrt(r)
    # rounded to integers (round(size * w_ratio / 2) half-sizes).
    ours = []
    for (h, w), stride, s in [((8, 12), 8, sizes[0]), ((4, 6), 16, sizes[1])]:
        shapes = A.anchor_cell_shapes(s, ratios)  # size-major
        shapes = shapes.reshape(len(s), len(ratios), 2).transpose(1, 0, 2).reshape(-1, 2)
        shapes = 2 * np.round(shapes / 2)
        ours.append(A.grid_anchors((h, w), stride, shapes, offset=0.0))
    np.testing.assert_allclose(np.concatenate(ours), ref, atol=1e-4)
