"""CocoSource and PanopticSource on real COCO val2017 data (tests/data/coco_panoptic_sample)."""

import json

import numpy as np
from PIL import Image

from msvision.data.coco import CocoSource
from msvision.data.panoptic import PanopticSource, rgb_to_segment_ids


def _sources(sample):
    coco = CocoSource(sample / "instances_from_panoptic.json", sample / "images",
                      with_masks=True)
    panoptic = PanopticSource(sample / "panoptic_examples.json", sample / "panoptic",
                              sample / "images", with_masks=True)
    return coco, panoptic


def test_reads_both_images(coco_sample):
    coco, _ = _sources(coco_sample)
    assert len(coco) == 2
    assert coco.image_ids == [142238, 439180]
    sizes = []
    for i in range(2):
        record = coco[i]
        on_disk = np.asarray(Image.open(coco_sample / "images" / record["file_name"]))
        np.testing.assert_array_equal(record["image"], on_disk)
        assert record["image"].dtype == np.uint8 and record["image"].shape[2] == 3
        assert record["boxes"].dtype == np.float32 and record["labels"].dtype == np.int32
        assert record["masks"].shape == (len(record["boxes"]),) + record["image"].shape[:2]
        sizes.append(record["orig_size"])
    assert sizes == [(427, 640), (360, 640)]
    assert len(coco[0]["boxes"]) + len(coco[1]["boxes"]) == 50
    assert coco.stats.corrupt_images == 0 and coco.stats.degenerate_boxes_dropped == 0


def test_category_mapping_round_trip(coco_sample):
    coco, _ = _sources(coco_sample)
    data = json.loads((coco_sample / "instances_from_panoptic.json").read_text())
    assert coco.classes.num_classes == 133
    assert list(coco.classes.label_to_category) == sorted(c["id"] for c in data["categories"])
    names = {c["id"]: c["name"] for c in data["categories"]}
    expected = {}
    for a in data["annotations"]:
        expected.setdefault(a["image_id"], []).append(a["category_id"])
    for i in range(2):
        record = coco[i]
        categories = [coco.classes.label_to_category[l] for l in record["labels"]]
        assert sorted(categories) == sorted(expected[record["image_id"]])
        for label in record["labels"]:
            assert coco.category_to_label[coco.classes.label_to_category[label]] == label
            assert coco.classes.class_names[label] == names[coco.classes.label_to_category[label]]
    crowd = sum(int(coco[i]["is_crowd"].sum()) for i in range(2))
    assert crowd == sum(a["iscrowd"] for a in data["annotations"]) > 0


def test_rle_masks_match_panoptic_png(coco_sample):
    """Masks decoded from RLE (pycocotools) equal masks read from the panoptic PNG,
    decoded independently here."""
    coco, _ = _sources(coco_sample)
    panoptic = json.loads((coco_sample / "panoptic_examples.json").read_text())
    for i in range(2):
        record = coco[i]
        annotation = next(a for a in panoptic["annotations"]
                          if a["image_id"] == record["image_id"])
        png = np.asarray(Image.open(coco_sample / "panoptic" / annotation["file_name"]),
                         np.int64)
        ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
        png_masks = [ids == s["id"] for s in annotation["segments_info"]]
        # Match segments by (category, box) – the instances file keeps their order.
        assert len(png_masks) == len(record["masks"])
        for mask, png_mask, segment, label in zip(record["masks"], png_masks,
                                                  annotation["segments_info"],
                                                  record["labels"]):
            assert coco.classes.label_to_category[label] == segment["category_id"]
            assert mask.sum() == segment["area"]
            np.testing.assert_array_equal(mask, png_mask)


def test_boxes_equal_mask_extents(coco_sample):
    coco, _ = _sources(coco_sample)
    for i in range(2):
        record = coco[i]
        for box, mask in zip(record["boxes"], record["masks"]):
            ys, xs = np.nonzero(mask)
            extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            np.testing.assert_allclose(box, extent, atol=1.0)


def test_panoptic_source_matches_instances(coco_sample):
    coco, panoptic = _sources(coco_sample)
    assert len(panoptic) == 2
    assert panoptic.classes.num_classes == 133
    for i in range(2):
        a, b = coco[i], panoptic[i]
        assert a["image_id"] == b["image_id"]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["masks"], b["masks"])
        np.testing.assert_allclose(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(a["is_crowd"], b["is_crowd"])
        categories = np.array(panoptic.classes.label_to_category)[b["labels"]]
        np.testing.assert_array_equal(b["is_thing"], categories <= 90)  # COCO thing ids
        assert len(np.unique(b["segment_ids"])) == len(b["segment_ids"])


def test_segment_id_decoding():
    rgb = np.array([[[1, 2, 3], [255, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(rgb_to_segment_ids(rgb),
                                  [[1 + 2 * 256 + 3 * 65536, 255]])
