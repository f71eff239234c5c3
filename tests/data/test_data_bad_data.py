"""Bad data never stops training: skipped or clipped, counted, and logged."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from msvision.data.coco import CocoSource


def _write_jpg(path, height, width, value):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


@pytest.fixture
def broken_dataset(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _write_jpg(images / "good.jpg", 48, 64, 100)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    _write_jpg(images / "empty.jpg", 40, 40, 50)
    _write_jpg(images / "crowded.jpg", 50, 50, 200)
    _write_jpg(images / "truncated.jpg", 30, 30, 10)
    data = (images / "truncated.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    anns = []

    def add(image_id, bbox, category_id=1, **extra):
        anns.append(dict(id=len(anns) + 1, image_id=image_id, bbox=bbox,
                         category_id=category_id, iscrowd=0, area=bbox[2] * bbox[3], **extra))

    add(1, [10, 10, 20, 15])          # fine
    add(1, [5, 5, 0, 10])             # zero width → dropped
    add(1, [100, 10, 10, 10])         # entirely right of the 64-px image → dropped
    add(1, [50, 40, 30, 30])          # partly outside → clipped to [50, 40, 64, 48]
    add(1, [1, 1, 5, 5], category_id=99)  # unknown category → dropped
    add(2, [1, 1, 10, 10])            # on the corrupt image
    for k in range(8):                # 8 objects on "crowded", max_instances = 5
        add(4, [k * 5, 0, 2 + k, 2 + k])
    add(5, [0, 0, 10, 10])
    add(77, [0, 0, 10, 10])           # image 77 is not in 'images' (two annotations)
    add(77, [5, 5, 10, 10])
    categories = [{"id": 1, "name": "thing"}, {"id": 3, "name": "other"}]
    image_records = [
        {"id": 1, "file_name": "good.jpg", "height": 48, "width": 64},
        {"id": 2, "file_name": "corrupt.jpg", "height": 20, "width": 20},
        {"id": 3, "file_name": "empty.jpg", "height": 40, "width": 40},
        {"id": 4, "file_name": "crowded.jpg", "height": 50, "width": 50},
        {"id": 5, "file_name": "truncated.jpg", "height": 30, "width": 30},
        {"id": 6, "file_name": "missing.jpg", "height": 30, "width": 30},
    ]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": image_records, "annotations": anns,
                                "categories": categories}))
    return path, images


def test_annotation_problems_are_counted(broken_dataset, caplog):
    path, images = broken_dataset
    with caplog.at_level(logging.WARNING, logger="msvision.data"):
        source = CocoSource(path, images, max_instances=5)
    stats = source.stats
    assert stats.images == 6
    assert stats.annotations == 17
    assert stats.orphan_annotations == 2 and stats.bad_files["orphan_annotations"] == ["image_id 77"]
    assert "image_id 77" in caplog.text
    assert stats.degenerate_boxes_dropped == 2
    assert stats.unknown_category_dropped == 1
    assert stats.boxes_clipped == 1
    assert stats.overflow_dropped == 3 and stats.images_over_max_instances == 1
    assert stats.images_without_annotations == 2  # empty.jpg and missing.jpg
    assert "good.jpg" in caplog.text and "crowded.jpg" in caplog.text

    good = source[0]
    np.testing.assert_allclose(good["boxes"], [[10, 10, 30, 25], [50, 40, 64, 48]])
    np.testing.assert_array_equal(good["labels"], [0, 0])
    crowded = source[3]
    widths = crowded["boxes"][:, 2] - crowded["boxes"][:, 0]
    np.testing.assert_allclose(widths, [5, 6, 7, 8, 9])  # the 5 largest, in file order
    empty = source[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert stats.as_dict()["data/overflow_dropped"] == 3


def test_unreadable_images_are_replaced(broken_dataset, caplog):
    path, images = broken_dataset
    source = CocoSource(path, images, max_instances=5)
    with caplog.at_level(logging.WARNING, logger="msvision.data"):
        replaced = source[1]  # corrupt.jpg → next readable: empty.jpg
    assert replaced["file_name"] == "empty.jpg" and replaced["image_id"] == 3
    assert source.stats.corrupt_images == 1 and source.stats.corrupt_image_reads == 1
    assert "corrupt.jpg" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="msvision.data"):
        again = source[1]  # deterministic; the same bad file is counted (and named) once
    assert again["image_id"] == 3 and source.stats.corrupt_images == 1 and source.stats.corrupt_image_reads == 2
    assert "corrupt.jpg" not in caplog.text
    # truncated.jpg and missing.jpg (indices 4, 5) wrap around to good.jpg.
    assert source[4]["image_id"] == 1 and source[5]["image_id"] == 1
    assert source.stats.corrupt_images == 3 and source.stats.corrupt_image_reads == 2 + 2 + 1
    names = [p.rsplit("/", 1)[-1] for p in source.stats.bad_files_report()["corrupt_images"]]
    assert names == ["corrupt.jpg", "truncated.jpg", "missing.jpg"]


def test_masks_fall_back_to_boxes(broken_dataset):
    path, images = broken_dataset
    source = CocoSource(path, images, max_instances=5, with_masks=True)
    record = source[0]  # no segmentation in the file → filled boxes
    assert record["masks"].shape == (2, 48, 64)
    assert record["masks"][0].sum() == 20 * 15
    assert record["masks"][1].sum() == 14 * 8


def test_pipeline_survives_bad_data(broken_dataset):
    from msvision.data.pipeline import build_eval_iterator, build_train_iterator
    from msvision.data.pipeline import default_data_config
    path, images = broken_dataset
    cfg = default_data_config()
    for split in (cfg.train, cfg.val):
        split.annotations, split.images = str(path), str(images)
    cfg.batch_size = cfg.eval_batch_size = 3
    cfg.max_instances = 5
    cfg.augment.update(scales=(32, 40), max_size=64, crop_resize_scales=(40,),
                       crop_min=16, crop_max=32)
    cfg.eval_scale, cfg.eval_max_size, cfg.bucket_divisor = 40, 64, 32
    cfg.num_threads = 1
    iterator = build_train_iterator(cfg, seed=0)
    for _ in range(4):
        batch = next(iterator)
        assert batch.images.shape[0] == 3 and (batch.image_ids > 0).all()
    ids = np.concatenate([b.image_ids for b in build_eval_iterator(cfg)])
    # Unreadable images 2, 5, 6 replaced by readable neighbours; 6 rows in 2 batches.
    np.testing.assert_array_equal(ids, [1, 3, 3, 4, 1, 1])
