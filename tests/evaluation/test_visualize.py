"""Drawing detections: output size, class colours on box borders, masks, GT style."""

import os

import numpy as np
from PIL import Image

from msvision.evaluation.visualize import class_color, draw_detections, save_grid

HERE = os.path.dirname(os.path.abspath(__file__))


def test_draw_boxes_colours_and_threshold(tmp_path):
    image = np.full((60, 80, 3), 127, np.uint8)
    boxes = np.array([[10, 10, 40, 50], [50, 5, 75, 30], [5, 5, 20, 20]], np.float32)
    labels = np.array([0, 3, 1])
    scores = np.array([0.9, 0.8, 0.1])
    out = draw_detections(image, boxes, labels, scores, ["a", "b", "c", "d"])
    assert isinstance(out, Image.Image) and out.size == (80, 60)
    px = np.asarray(out)
    assert tuple(px[50, 25]) == class_color(0)  # bottom border of box 0
    assert tuple(px[18, 40]) == class_color(0)  # right border of box 0
    assert tuple(px[30, 62]) == class_color(3)  # bottom border of box 1
    assert class_color(0) != class_color(3) != class_color(1)
    assert tuple(px[12, 5]) == (127, 127, 127)  # box 2 below the threshold: not drawn
    assert tuple(px[40, 25]) == (127, 127, 127)  # interior untouched
    save_grid([out, out, out], str(tmp_path / "grid.png"), num_columns=2)
    assert Image.open(tmp_path / "grid.png").size[0] > 160


def test_masks_and_gt():
    image = np.zeros((40, 40, 3), np.uint8)
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 15:25, 15:25] = True
    gt = np.array([[2, 2, 37, 37]], np.float32)
    out = np.asarray(
        draw_detections(image, np.array([[10, 10, 30, 30]]), [2], [0.95], masks=masks, gt_boxes=gt, gt_labels=[5])
    )
    assert out.shape == (40, 40, 3)
    assert np.all(out[20, 20] > 0) and np.all(out[20, 20] < np.asarray(class_color(2)) + 1)  # blended
    assert tuple(out[5, 5]) == (0, 0, 0)  # outside everything
    gt_edge = out[2, 3:37]  # dashed top edge: some pixels in the GT colour, some not
    is_gt = np.all(gt_edge == class_color(5), axis=-1)
    assert 0 < is_gt.sum() < len(is_gt)


def test_real_image():
    path = "/work/shared/data/coco_panoptic_sample/images/000000142238.jpg"
    local = os.path.join(HERE, "..", "data", "coco_panoptic_sample", "images", "000000142238.jpg")
    path = local if os.path.exists(local) else path
    if not os.path.exists(path):
        return
    image = np.asarray(Image.open(path).convert("RGB"))
    out = draw_detections(image, np.array([[100, 100, 300, 300]]), [0], [0.7], ["person"])
    assert out.size == (image.shape[1], image.shape[0])


def test_label_size_scales_with_the_image():
    heights, widths = [], []
    for size in (200, 2000):
        image = np.full((size, size, 3), 127, np.uint8)
        box = np.array([[0.25, 0.25, 0.45, 0.45]]) * size
        picture = np.asarray(draw_detections(image, box, [0], [0.9], ["person"]))
        above = np.all(picture[: int(box[0, 1]) - 2] == class_color(0), axis=-1)  # the label's background
        heights.append(int(above.any(axis=1).sum()))
        widths.append(int(above.sum(axis=1).max()))
    assert heights[0] >= 10 and widths[0] >= 30  # readable on a small image
    assert heights[1] >= 3 * heights[0] and widths[1] >= 3 * widths[0]  # and much larger on a 10x image
    assert heights[1] < 0.05 * 2000  # without covering the picture
