"""The panoptic task's data: every non-crowd segment (thing or stuff) a box + mask instance
over all panoptic classes (thesis §5.5, as the released code), on COCO panoptic and on the
synthetic split."""

import json

import numpy as np

from msvision.data.pipeline import build_source, default_data_config, train_dataset
from msvision.train import data_setup


def test_coco_panoptic_source_drops_crowd_segments(coco_sample):
    cfg = default_data_config()
    cfg.source = "coco_panoptic"
    cfg.with_masks = True
    cfg.train.panoptic = str(coco_sample / "panoptic_examples.json")
    cfg.train.panoptic_dir = str(coco_sample / "panoptic")
    cfg.train.images = str(coco_sample / "images")
    source = build_source(cfg.train, cfg)
    data = json.loads((coco_sample / "panoptic_examples.json").read_text())
    assert source.classes.num_classes == 133 and sum(source.classes.label_is_thing) == 80
    crowd = 0
    for i, ann in enumerate(data["annotations"]):
        record = source[i]
        segments = [s for s in ann["segments_info"] if not s["iscrowd"]]
        crowd += len(ann["segments_info"]) - len(segments)
        assert not record["is_crowd"].any()
        assert sorted(record["segment_ids"].tolist()) == sorted(s["id"] for s in segments)
        assert (~record["is_thing"]).any() and record["is_thing"].any()  # stuff and things alike
        assert record["masks"].any(axis=(1, 2)).all()
    assert crowd == 3 and source.stats.crowd_segments_dropped == crowd


def test_synthetic_panoptic_split_trains_on_things_and_stuff(shapes_root):
    cfg = default_data_config()
    cfg.source = "coco_panoptic"
    cfg.with_masks = True
    cfg.synthetic.update(enabled=True, root=str(shapes_root), num_train=24, num_val=10, image_size=96, seed=3)
    cfg.update(batch_size=2, max_instances=12, eval_scale=96, eval_max_size=128, buckets=((128, 128),),
               num_threads=1, prefetch_buffer=1)
    cfg.augment.update(scales=(96,), max_size=128, crop_prob=0.0)
    info = data_setup.dataset_info(cfg)
    assert info.classes.class_names == ("circle", "triangle", "rectangle", "star", "hexagon", "cross",
                                "sky", "grass", "water", "sand")
    batch = next(iter(train_dataset(cfg, seed=0, source=info.train_source)))
    labels = batch.labels[batch.valid]
    assert (labels >= 6).any()  # stuff segments are instances
    masks = batch.masks[batch.valid]
    assert masks.any(axis=(1, 2)).all()
    # Panoptic segments do not overlap.
    assert (batch.masks.sum(1) <= 1).all()
    assert info.val_source.image_ids == [1_000_001 + i for i in range(10)]
    assert np.isin(info.val_source[0]["labels"], np.arange(10)).all()
