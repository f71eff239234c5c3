"""The synthetic shapes dataset: deterministic, consistent COCO and panoptic files."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from msvision.data import synthetic
from msvision.data.coco import CocoSource


def test_same_seed_byte_identical(tmp_path):
    a = synthetic.generate_synthetic_dataset(tmp_path / "a", num_train=5, num_val=2,
                                             image_size=64, seed=11)
    b = synthetic.generate_synthetic_dataset(tmp_path / "b", num_train=5, num_val=2,
                                             image_size=64, seed=11)
    c = synthetic.generate_synthetic_dataset(tmp_path / "c", num_train=5, num_val=2,
                                             image_size=64, seed=12)
    for name in ("train/instances.json", "train/panoptic.json", "val/instances.json",
                 "train/images/000003.jpg", "train/panoptic/000003.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train/instances.json").read_bytes() != (c / "train/instances.json").read_bytes()


def test_annotations_match_pixels(shapes_root):
    """bbox and area equal the decoded segmentation (polygon or RLE), and the
    panoptic PNG holds exactly the segments of the JSON."""
    coco = COCO(str(shapes_root / "train" / "instances.json"))
    panoptic = json.loads((shapes_root / "train" / "panoptic.json").read_text())
    categories = {c["id"]: c for c in panoptic["categories"]}
    polygons = 0
    for entry in panoptic["annotations"]:
        png = np.asarray(Image.open(shapes_root / "train" / "panoptic" / entry["file_name"]),
                         np.int64)
        ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
        info = {s["id"]: s for s in entry["segments_info"]}
        assert set(np.unique(ids)) == set(info)  # every pixel labelled, ids match
        instances = coco.loadAnns(coco.getAnnIds(imgIds=entry["image_id"]))
        things = [s for s in entry["segments_info"] if categories[s["category_id"]]["isthing"]]
        assert len(things) == len(instances)
        for segment, annotation in zip(things, instances):
            mask = coco.annToMask(annotation).astype(bool)
            polygons += isinstance(annotation["segmentation"], list)
            np.testing.assert_array_equal(mask, ids == segment["id"])
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose(annotation["bbox"], [xs.min(), ys.min(),
                                       xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
            assert annotation["area"] == mask.sum() == segment["area"]
            assert annotation["category_id"] == segment["category_id"]
        for segment_id, segment in info.items():
            assert segment["area"] == (ids == segment_id).sum()
    assert polygons > 0


def test_dataset_statistics(shapes_root):
    source = CocoSource(shapes_root / "train" / "instances.json", shapes_root / "train" / "images")
    assert len(source) == 24 and source.classes.class_names[0] == "circle"
    sizes = np.array([source.image_size(i) for i in range(len(source))])
    aspect = sizes[:, 1] / sizes[:, 0]
    assert (aspect > 0.74).all() and (aspect < 1.34).all() and len(set(map(tuple, sizes))) > 3
    labels = np.concatenate([source[i]["labels"] for i in range(len(source))])
    assert len(set(labels)) == 6
    assert source.stats.degenerate_boxes_dropped == 0 and source.stats.boxes_clipped == 0


def test_ensure_is_idempotent_and_checks_parameters(tmp_path):
    root = tmp_path / "shapes"
    synthetic.ensure_synthetic_dataset(root, num_train=2, num_val=1, image_size=48, seed=0)
    stamp = (root / "train" / "instances.json").stat().st_mtime_ns
    synthetic.ensure_synthetic_dataset(root, num_train=2, num_val=1, image_size=48, seed=0)
    assert (root / "train" / "instances.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no temporary left
    with pytest.raises(ValueError, match="generated with"):
        synthetic.ensure_synthetic_dataset(root, num_train=3, num_val=1, image_size=48)


def test_ensure_leaves_nothing_after_a_crash(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(synthetic, "generate_split", crash)
    with pytest.raises(RuntimeError):
        synthetic.ensure_synthetic_dataset(tmp_path / "shapes", num_train=2, num_val=1)
    assert list(tmp_path.iterdir()) == []
