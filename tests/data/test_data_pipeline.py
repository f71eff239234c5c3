"""The grain pipelines: batches, buckets, sharding, determinism, checkpointing."""

import pickle

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from msvision.data import batching, pipeline
from msvision.data.classes import ClassList
from msvision.data.coco import CocoSource
from msvision.structures import Batch


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: Batch, b: Batch):
    for name in ("images", "image_sizes", "orig_sizes", "image_ids", "boxes", "labels",
                 "valid", "is_crowd"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_default_buckets_and_choice():
    assert batching.default_buckets(1333) == [
        (h, w) for h in (768, 1024, 1408) for w in (768, 1024, 1408)]
    buckets = batching.default_buckets(1333)
    assert batching.choose_bucket([(800, 1066), (800, 1199)], buckets) == (1024, 1408)
    assert batching.choose_bucket([(1199, 800), (600, 600)], buckets) == (1408, 1024)
    assert batching.choose_bucket([(700, 700)], buckets) == (768, 768)
    assert batching.choose_bucket([(2000, 10)], buckets) == (1408, 1408)  # none fits


def test_train_batch_contents(small_data_cfg):
    cfg = small_data_cfg
    cfg.with_masks = True
    source = pipeline.build_source(cfg.train, cfg)
    buckets = pipeline.buckets_for(cfg)
    assert buckets == batching.default_buckets(128, 32)
    for batch in take(pipeline.build_train_iterator(cfg, seed=1, source=source), 4):
        b, m = cfg.batch_size, cfg.max_instances
        height, width = batch.images.shape[1:3]
        assert batch.images.shape == (b, height, width, 3) and batch.images.dtype == np.uint8
        # One process: the bucket is the smallest holding this batch's images.
        assert (height, width) == batching.choose_bucket(
            [tuple(s) for s in batch.image_sizes], buckets)
        assert batch.boxes.shape == (b, m, 4) and batch.boxes.dtype == np.float32
        assert batch.labels.dtype == np.int32 and batch.image_ids.dtype == np.int32
        assert batch.valid.dtype == bool and batch.is_crowd.dtype == bool
        assert batch.masks.shape == (b, m, height, width)
        pixels = batch.pixel_mask()
        assert not batch.images[~pixels].any()  # zero padding
        for i in range(b):
            n = int(batch.valid[i].sum())
            assert batch.valid[i, :n].all() and not batch.valid[i, n:].any()
            assert not batch.boxes[i, n:].any() and not batch.masks[i, n:].any()
            h, w = batch.image_sizes[i]
            boxes = batch.boxes[i, :n]
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert (boxes[:, 0::2] <= w + 1e-3).all() and (boxes[:, 1::2] <= h + 1e-3).all()
            assert not batch.masks[i][:, ~pixels[i]].any()
            assert (batch.labels[i, :n] < source.classes.num_classes).all()


def test_same_seed_same_batches(small_data_cfg):
    first = take(pipeline.build_train_iterator(small_data_cfg, seed=5), 3)
    again = take(pipeline.build_train_iterator(small_data_cfg, seed=5), 3)
    other = take(pipeline.build_train_iterator(small_data_cfg, seed=6), 3)
    for a, b in zip(first, again):
        assert_batches_equal(a, b)
    assert any(not np.array_equal(a.image_ids, b.image_ids) for a, b in zip(first, other))


def test_epochs_cover_dataset_and_reshuffle(small_data_cfg):
    cfg = small_data_cfg  # 24 images, batch 4 → 6 batches per epoch
    batches = take(pipeline.build_train_iterator(cfg, seed=0), 12)
    epoch1 = np.concatenate([b.image_ids for b in batches[:6]])
    epoch2 = np.concatenate([b.image_ids for b in batches[6:]])
    ids = CocoSource(cfg.train.annotations, cfg.train.images).image_ids
    assert sorted(epoch1) == sorted(ids) == sorted(epoch2)
    assert not np.array_equal(epoch1, epoch2)


def test_shards_split_each_global_batch(small_data_cfg):
    cfg = small_data_cfg
    single = take(pipeline.build_train_iterator(cfg, seed=2), 3)
    shards = [take(pipeline.build_train_iterator(cfg, seed=2, shard_index=i, shard_count=2), 3)
              for i in range(2)]
    for k in range(3):
        a, b = shards[0][k], shards[1][k]
        assert a.batch_size == b.batch_size == cfg.batch_size // 2
        assert a.images.shape[1:] == b.images.shape[1:] == single[k].images.shape[1:]  # bucket
        assert not set(a.image_ids) & set(b.image_ids)
        union = np.concatenate([a.image_ids, b.image_ids])
        assert sorted(union) == sorted(single[k].image_ids)
        # The same sample is augmented identically whatever the shard count.
        for part in (a, b):
            for i, image_id in enumerate(part.image_ids):
                j = list(single[k].image_ids).index(image_id)
                np.testing.assert_array_equal(part.images[i], single[k].images[j])
                np.testing.assert_array_equal(part.boxes[i], single[k].boxes[j])


def test_iterator_state_round_trip(small_data_cfg):
    iterator = pipeline.build_train_iterator(small_data_cfg, seed=3)
    take(iterator, 3)
    state = iterator.get_state()
    expected = take(iterator, 2)
    resumed = pipeline.build_train_iterator(small_data_cfg, seed=3)
    resumed.set_state(state)
    for a, b in zip(expected, take(resumed, 2)):
        assert_batches_equal(a, b)
    # start_step skips batches the same way.
    skipped = pipeline.build_train_iterator(small_data_cfg, seed=3, start_step=3)
    assert_batches_equal(expected[0], next(skipped))


def test_orbax_checkpoint_of_iterator(small_data_cfg, tmp_path):
    iterator = pipeline.build_train_iterator(small_data_cfg, seed=4)
    take(iterator, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(2, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = take(iterator, 2)
    restored = pipeline.build_train_iterator(small_data_cfg, seed=4)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(2, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(restored)))
    for a, b in zip(expected, take(restored, 2)):
        assert_batches_equal(a, b)


def test_eval_order_padding_and_shards(small_data_cfg):
    cfg = small_data_cfg  # 10 val images, global eval batch 4 → 3 batches, 2 padding
    source = pipeline.build_source(cfg.val, cfg)
    batches = list(pipeline.build_eval_iterator(cfg, source=source))
    assert len(batches) == 3
    ids = np.concatenate([b.image_ids for b in batches])
    np.testing.assert_array_equal(ids, source.image_ids + [-1, -1])
    last = batches[-1]
    assert not last.valid[2:].any() and not last.images[2:].any()
    for batch in batches:  # eval resize: shortest edge 96, longest ≤ 128
        real = batch.image_ids >= 0
        sizes = batch.image_sizes[real]
        assert ((sizes.min(1) == 96) | (sizes.max(1) == 128)).all()
        assert (batch.orig_sizes[real] == [source.image_size(source.image_ids.index(i))
                                           for i in batch.image_ids[real]]).all()
    shards = [list(pipeline.build_eval_iterator(cfg, shard_index=i, shard_count=2))
              for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    for k in range(3):
        union = np.concatenate([shards[0][k].image_ids, shards[1][k].image_ids])
        assert sorted(union) == sorted(batches[k].image_ids)
        assert shards[0][k].images.shape == shards[1][k].images.shape


def test_a_source_has_its_class_list(small_data_cfg):
    source = pipeline.build_source(small_data_cfg.train, small_data_cfg)
    assert source.classes == ClassList(("circle", "triangle", "rectangle", "star", "hexagon", "cross"),
                                       (1, 2, 3, 4, 5, 6))
    assert len(source) == 24


def test_pipeline_is_picklable(small_data_cfg):
    """Multiprocessing workers receive the dataset by pickling."""
    dataset = pipeline.train_dataset(small_data_cfg, seed=0)
    clone = pickle.loads(pickle.dumps(dataset))
    assert_batches_equal(dataset[1], clone[1])


def test_panoptic_source_in_pipeline(small_data_cfg, shapes_root):
    """data.source = 'coco_panoptic': things and stuff segments with masks."""
    cfg = small_data_cfg
    cfg.source, cfg.with_masks, cfg.max_instances = "coco_panoptic", True, 12
    cfg.val.panoptic = str(shapes_root / "val" / "panoptic.json")
    cfg.val.panoptic_dir = str(shapes_root / "val" / "panoptic")
    batch = next(pipeline.build_eval_iterator(cfg))
    source = pipeline.build_source(cfg.val, cfg)
    assert source.classes.num_classes == 10  # 6 things + 4 stuff
    for i in range(batch.batch_size):
        n = int(batch.valid[i].sum())
        h, w = batch.image_sizes[i]
        # Panoptic segments tile the image: every pixel in exactly one mask.
        coverage = batch.masks[i, :n, :h, :w].sum(0)
        assert (coverage == 1).mean() > 0.99


@pytest.mark.slow
def test_multiprocessing_workers(small_data_cfg):
    small_data_cfg.num_workers = 2
    iterator = pipeline.build_train_iterator(small_data_cfg, seed=0)
    with_workers = take(iterator, 3)
    state = iterator.get_state()
    after = next(iterator)
    small_data_cfg.num_workers = 0
    for a, b in zip(with_workers, take(pipeline.build_train_iterator(small_data_cfg, seed=0), 3)):
        assert_batches_equal(a, b)
    small_data_cfg.num_workers = 2
    resumed = pipeline.build_train_iterator(small_data_cfg, seed=0)
    resumed.set_state(state)
    assert_batches_equal(after, next(resumed))
