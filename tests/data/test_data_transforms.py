"""Augmentation keeps image, boxes and masks consistent (thesis section 2.4, DETR's recipe)."""

import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from msvision.data import transforms as T

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def colour_coded_record(height=120, width=160, seed=0):
    """Four non-overlapping axis-aligned rectangles of distinct pure colours on
    grey; the boxes are the mask extents. (Rectangles because cropping any other
    shape, or an occluded object, leaves a box larger than the visible mask, in
    DETR too: a box crop is exact only for box-shaped objects.)"""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 128, np.uint8)
    masks = []
    y, x = np.mgrid[:height, :width]
    while len(masks) < 4:
        cx, cy = rng.uniform(10, width - 10), rng.uniform(10, height - 10)
        rx, ry = rng.uniform(8, 35), rng.uniform(8, 35)
        mask = (np.abs(x - cx) < rx) & (np.abs(y - cy) < ry)
        if not any((mask & m).any() for m in masks):
            masks.append(mask)
    masks = np.stack(masks)
    for k, mask in enumerate(masks):
        image[mask] = COLOURS[k]
    return {"image": image, "masks": masks, "boxes": mask_boxes(masks),
            "labels": np.arange(4, dtype=np.int32), "is_crowd": np.zeros(4, bool),
            "image_id": 7, "orig_size": (height, width), "file_name": "x.jpg"}


def mask_boxes(masks):
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            boxes[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return boxes


def assert_consistent(record, box_tolerance=2.0):
    image, masks, boxes = record["image"], record["masks"], record["boxes"]
    assert masks.shape == (len(boxes),) + image.shape[:2]
    for box, mask, label in zip(boxes, masks, record["labels"]):
        if mask.sum() < 4:
            continue  # a sliver kept by the crop rule; nothing to compare
        np.testing.assert_allclose(mask_boxes(mask[None])[0], box, atol=box_tolerance)
        # Interior pixels carry the object's colour (eroded by 3 px: bilinear
        # upsampling blurs a colour edge over ~scale pixels).
        interior = ndimage.binary_erosion(mask, iterations=3)
        if interior.sum() >= 4:
            distance = np.abs(image[interior].astype(int) - COLOURS[label]).max(axis=1)
            assert (distance <= 10).mean() > 0.97


def augment_cfg(**overrides):
    cfg = dict(hflip_prob=0.5, scales=(96, 112, 128), max_size=200, crop_prob=0.5,
               crop_resize_scales=(100, 120), crop_min=50, crop_max=90)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def test_flip():
    record = colour_coded_record()
    flipped = T.hflip(record)
    np.testing.assert_array_equal(flipped["image"], record["image"][:, ::-1])
    np.testing.assert_array_equal(flipped["masks"], record["masks"][:, :, ::-1])
    np.testing.assert_allclose(flipped["boxes"], mask_boxes(flipped["masks"]))
    np.testing.assert_allclose(T.hflip(flipped)["boxes"], record["boxes"])


@pytest.mark.parametrize("size", [(60, 80), (240, 320), (100, 333)])
def test_resize(size):
    record = T.resize(colour_coded_record(), size)
    assert record["image"].shape == size + (3,)
    assert_consistent(record, box_tolerance=1.5)


def test_crop_clips_and_drops():
    record = colour_coded_record()
    cropped = T.crop(record, 20, 30, 50, 60)
    np.testing.assert_array_equal(cropped["image"], record["image"][20:70, 30:90])
    boxes = cropped["boxes"]
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 60).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 50).all()
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    assert len(cropped["labels"]) == len(boxes) == len(cropped["masks"])
    # Objects whose box misses the window disappear with their labels and masks.
    window = (25, 10, 40, 30)  # top, left, height, width
    expected = [k for k, (x0, y0, x1, y1) in enumerate(record["boxes"])
                if x0 < 10 + 30 and x1 > 10 and y0 < 25 + 40 and y1 > 25]
    small = T.crop(record, *window)
    np.testing.assert_array_equal(small["labels"], expected)
    assert len(small["masks"]) == len(small["is_crowd"]) == len(expected)
    assert_consistent(cropped, box_tolerance=0.0)


@pytest.mark.parametrize("seed", range(16))
def test_train_plans_consistent(seed):
    record = colour_coded_record(seed=seed)
    rng = np.random.default_rng(seed)
    plan = T.sample_train_plan(record["image"].shape[:2], rng, augment_cfg())
    out = T.apply_plan(record, plan)
    assert out["image"].shape[:2] == T.plan_output_size(record["image"].shape[:2], plan)
    assert_consistent(out)


def test_plan_statistics_follow_detr():
    """Flip and branch frequencies, scale set and crop bounds."""
    cfg = augment_cfg()
    rng = np.random.default_rng(0)
    flips = crops = 0
    for _ in range(400):
        plan = T.sample_train_plan((300, 400), rng, cfg)
        flips += plan[0] == ("flip",)
        crop = [op for op in plan if op[0] == "crop"]
        if crop:
            crops += 1
            top, left, h, w = crop[0][1]
            assert 50 <= h <= 90 and 50 <= w <= 90 and top >= 0 and left >= 0
        out_h, out_w = T.plan_output_size((300, 400), plan)
        assert min(out_h, out_w) in cfg.scales or max(out_h, out_w) <= cfg.max_size
        assert max(out_h, out_w) <= cfg.max_size
    assert 150 < flips < 250 and 150 < crops < 250


def test_resized_size_matches_detr():
    # DETR's get_size_with_aspect_ratio on COCO-like sizes.
    assert T.resized_size((480, 640), 800, 1333) == (800, 1066)
    assert T.resized_size((427, 640), 800, 1333) == (800, 1199)
    assert T.resized_size((360, 640), 800, 1333) == (750, 1333)
    assert T.resized_size((640, 360), 800, 1333) == (1333, 750)
    assert T.resized_size((800, 1000), 800, 1333) == (800, 1000)
    assert T.resized_size((500, 375), 600, None) == (800, 600)


def test_same_rng_same_plan():
    cfg = augment_cfg()
    a = T.sample_train_plan((300, 400), np.random.default_rng(5), cfg)
    b = T.sample_train_plan((300, 400), np.random.default_rng(5), cfg)
    assert a == b


def test_eval_transform():
    record = T.EvalTransform(96, 128)(colour_coded_record())
    assert record["image"].shape[:2] == (96, 128)
    assert_consistent(record, box_tolerance=1.5)
