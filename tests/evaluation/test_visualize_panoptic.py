"""Drawing panoptic segmentations: segment colours, void left as the image, borders, tags."""

import numpy as np

from msvision.evaluation.visualize import class_color, draw_panoptic, segment_color


def test_draw_panoptic_colours_segments_and_leaves_void():
    image = np.full((200, 300, 3), 100, np.uint8)
    ids = np.zeros((200, 300), np.int32)
    ids[:, 150:] = 1  # stuff, category 11
    ids[25:75, 25:75] = 2  # thing, category 1
    ids[100:150, 25:75] = 3  # another thing of category 1
    segments = [{"id": 1, "category_id": 11, "isthing": 0, "score": 0.8},
                {"id": 2, "category_id": 1, "isthing": 1, "score": 0.9},
                {"id": 3, "category_id": 1, "isthing": 1}]
    names = {1: "circle", 11: "sky"}
    out = np.asarray(draw_panoptic(image, ids, segments, names, category_labels={1: 0, 11: 6}, alpha=1.0,
                                   min_size=0))
    assert out.shape == (200, 300, 3)
    assert tuple(out[190, 140]) == (100, 100, 100)  # void: the image
    assert tuple(out[195, 295]) == class_color(6)  # stuff: its class colour
    assert tuple(out[27, 27]) == segment_color(0, 1, True)  # the things: shades of the class colour
    assert tuple(out[147, 27]) == segment_color(0, 2, True) != segment_color(0, 1, True)
    assert tuple(out[190, 149]) == (255, 255, 255)  # border between void and stuff
    assert (out[50:130, 200:260] != np.asarray(class_color(6), np.uint8)).any()  # the stuff's tag
    assert draw_panoptic(image[:40, :60], ids[:40, :60], segments, names, min_size=120).size == (120, 80)
