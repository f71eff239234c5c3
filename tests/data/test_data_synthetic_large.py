"""The "large" synthetic variant: objects 96–400 px across with 1–4 px outline detail."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from msvision.data import synthetic, synthetic_large


@pytest.fixture(scope="module")
def large_root(tmp_path_factory):
    return synthetic.ensure_synthetic_dataset(tmp_path_factory.mktemp("large") / "large", num_train=6, num_val=8,
                                              image_size=448, seed=1, variant="large")


def test_deterministic_and_recorded(tmp_path, large_root):
    again = synthetic.generate_synthetic_dataset(tmp_path / "again", num_train=6, num_val=8, image_size=448,
                                                 seed=1, variant="large")
    for name in ("train/instances.json", "val/panoptic.json", "val/images/000003.jpg", "val/panoptic/000003.png"):
        assert (again / name).read_bytes() == (large_root / name).read_bytes(), name
    assert json.loads((large_root / "synthetic.json").read_text())["variant"] == "large"
    with pytest.raises(ValueError, match="generated with"):  # a default-variant request does not reuse it
        synthetic.ensure_synthetic_dataset(large_root, num_train=6, num_val=8, image_size=448, seed=1)
    with pytest.raises(ValueError, match="unknown synthetic variant"):
        synthetic.ensure_synthetic_dataset(tmp_path / "x", variant="huge")
    assert not (tmp_path / "x").exists()


def test_annotations_match_pixels_and_large_objects_exist(large_root):
    """RLE masks, boxes and areas equal the panoptic segments; the validation split has COCO
    "large" objects (area > 96²), so AP_L is defined."""
    for split in ("train", "val"):
        coco = COCO(str(large_root / split / "instances.json"))
        panoptic = json.loads((large_root / split / "panoptic.json").read_text())
        assert {c["name"] for c in coco.dataset["categories"]} == {n for _, n, _ in synthetic_large.THING_CLASSES}
        for entry in panoptic["annotations"]:
            png = np.asarray(Image.open(large_root / split / "panoptic" / entry["file_name"]), np.int64)
            ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
            instances = coco.loadAnns(coco.getAnnIds(imgIds=entry["image_id"]))
            things = [s for s in entry["segments_info"] if s["category_id"] <= 6]
            assert len(things) == len(instances) <= synthetic_large.MAX_OBJECTS
            for segment, annotation in zip(things, instances):
                assert isinstance(annotation["segmentation"], dict)  # RLE: holes are kept
                mask = coco.annToMask(annotation).astype(bool)
                np.testing.assert_array_equal(mask, ids == segment["id"])
                assert annotation["area"] == mask.sum()
        if split == "val":
            assert max(a["area"] for a in coco.dataset["annotations"]) > 96 ** 2


@pytest.mark.parametrize("name", sorted(synthetic_large.DRAWERS))
def test_every_class_has_its_size_and_thin_detail(name):
    """Drawn at radius r the object spans 2r (the circle around it); a 5×5 morphological opening,
    which leaves a disc untouched, removes part of every class (teeth, spokes, legs, ripples,
    stems: detail under 5 px); gears and wheels have holes."""
    size = 500
    for radius in (48, 200):
        for angle in (0.0, 0.8):
            mask = synthetic_large.object_mask(name, np.random.default_rng(7), size, size, 250, 250, radius, angle)
            ys, xs = np.nonzero(mask)
            across = 2 * np.sqrt((ys + 0.5 - 250) ** 2 + (xs + 0.5 - 250) ** 2).max()
            assert 0.95 * 2 * radius <= across <= 2 * radius + 6  # + the ripple of starfish outlines
            opened = ndimage.binary_opening(mask, np.ones((5, 5)))
            assert mask.sum() - opened.sum() > 0.001 * mask.sum()
            if name in ("gear", "wheel"):
                assert ndimage.binary_fill_holes(mask).sum() > 1.05 * mask.sum()
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 250) ** 2 + (xx - 250) ** 2 < 48 ** 2
    assert ndimage.binary_opening(disc, np.ones((5, 5))).sum() == disc.sum()


def test_objects_are_96_to_400_px_and_occlude():
    """Over 60 images: the objects' full masks (before occlusion) span 96–400 px (circle
    diameter, within rasterisation), 1–4 per image, and some older objects are partly covered."""
    spans, counts, occluded = [], [], 0
    for i in range(60):
        image, things, _ = synthetic_large.draw_image(np.random.default_rng([0, 0, i]), 448)
        assert 380 <= min(image.shape[:2]) and max(image.shape[:2]) <= 520
        counts.append(len(things))
        for t in things:
            ys, xs = np.nonzero(t["mask"])
            spans.append(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)
            occluded += int(t["visible"].sum() < t["mask"].sum())
    assert max(counts) <= synthetic_large.MAX_OBJECTS and np.mean(counts) > 1.5
    assert max(spans) <= 1.05 * synthetic_large.MAX_EXTENT and np.percentile(spans, 90) > 250
    assert occluded > 0
