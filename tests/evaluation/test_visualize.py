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
    out = draw_detections(image, boxes, labels, scores, ["a", "b", "c", "d"], min_size=0, line_width=2)
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
        draw_detections(image, np.array([[10, 10, 30, 30]]), [2], [0.95], masks=masks, gt_boxes=gt, gt_labels=[5],
                        min_size=0, line_width=2)
    )
    assert out.shape == (40, 40, 3)
    assert np.all(out[20, 20] > 0) and np.all(out[20, 20] < np.asarray(class_color(2)) + 1)  # blended
    gt_edge = out[2, 3:37]  # dashed top edge: some pixels in the GT colour, some not
    is_gt = np.all(gt_edge == class_color(5), axis=-1)
    assert 0 < is_gt.sum() < len(is_gt)


def test_real_image():
    path = os.path.join(HERE, "..", "data", "coco_panoptic_sample", "images", "000000142238.jpg")
    image = np.asarray(Image.open(path).convert("RGB"))
    out = draw_detections(image, np.array([[100, 100, 300, 300]]), [0], [0.7], ["person"])
    assert out.size == (image.shape[1], image.shape[0])  # 640 px: drawn at its own size


def test_small_images_are_enlarged_and_tags_do_not_overlap():
    """A 224-px quickstart image with crowded detections: drawn at >= 640 px, boxes
    scaled with it, and no two tags cover each other."""
    from msvision.evaluation import visualize

    image = np.full((224, 200, 3), 90, np.uint8)
    boxes = np.array([[20 + 3 * i, 30 + 2 * i, 120 + i, 140 + 2 * i] for i in range(8)], np.float32)
    out = draw_detections(image, boxes, np.arange(8) % 3, np.linspace(0.9, 0.5, 8), ["circle", "square", "star"],
                          gt_boxes=boxes[:3] + 5, gt_labels=[0, 1, 2])
    assert out.size == (600, 672)  # factor 3 = ceil(640 / 224)
    px = np.asarray(out)
    assert tuple(px[140 * 3 - 1, 70 * 3]) == class_color(0)  # box 0's bottom edge, scaled by 3
    placed = []
    rects = [visualize.place_tag((600, 672), (60 + 9 * i, 90 + 6 * i), (150, 25), placed) for i in range(11)]
    assert len(rects) == 11
    for i in range(len(rects)):
        for j in range(i):
            assert not visualize._overlaps(rects[i], rects[j]), (rects[i], rects[j])
