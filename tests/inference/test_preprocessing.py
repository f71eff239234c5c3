"""Inference preprocessing against evaluation's collation (the oracle): the same padded
images, sizes and padding slots, with no ground truth made up."""

import numpy as np

from msvision.data.batching import collate
from msvision.data.pipeline import padding_record
from msvision.inference import Preprocessing, pad_images
from msvision.structures import Batch, ImageBatch


def _record(image, orig_size):
    return {"image": image, "orig_size": orig_size, "image_id": 0, "boxes": np.zeros((0, 4), np.float32),
            "labels": np.zeros((0,), np.int32), "is_crowd": np.zeros((0,), bool)}


def test_pad_images_is_evaluations_collation_without_ground_truth():
    rng = np.random.default_rng(0)
    preprocessing = Preprocessing(96, 128, ((64, 64), (128, 128)), allow_new_buckets=False)
    images = [rng.integers(0, 256, size, np.uint8) for size in ((48, 64, 3), (300, 37, 3), (20, 20, 3))]
    resized = [preprocessing.resize(im) for im in images]
    assert [r.image.shape[:2] for r in resized] == [(96, 128), (128, 16), (96, 96)]
    assert [r.orig_size for r in resized] == [(48, 64), (300, 37), (20, 20)]
    for bucket in ((128, 128), (64, 64)):  # fits; shrunk into the bucket (an export's largest)
        got = pad_images(resized, bucket, batch_size=5)
        assert type(got) is ImageBatch
        want = collate([_record(r.image, r.orig_size) for r in resized] + [padding_record()] * 2, bucket,
                       max_instances=1)
        for key in ("images", "image_sizes", "orig_sizes"):
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=f"{bucket} {key}")
            assert getattr(got, key).dtype == getattr(want, key).dtype
    assert preprocessing.batch(resized[:1]).images.shape == (1, 128, 128, 3)  # the smallest bucket holding it


def test_a_batch_is_an_image_batch():
    # Detector.predict reads an ImageBatch; evaluation hands it a Batch, which is one (with ground truth).
    batch = collate([_record(np.zeros((8, 8, 3), np.uint8), (16, 16))], (16, 16), max_instances=2)
    assert isinstance(batch, ImageBatch) and isinstance(batch, Batch)
    np.testing.assert_array_equal(batch.pixel_mask(), ImageBatch(batch.images, batch.image_sizes,
                                                                  batch.orig_sizes).pixel_mask())
