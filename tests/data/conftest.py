"""Shared fixtures of the data tests: a tiny synthetic dataset and the real COCO sample."""

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "coco_panoptic_sample"


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (24 train, 10 val images around 96 px)."""
    from msvision.data.synthetic import ensure_synthetic_dataset
    root = tmp_path_factory.mktemp("synthetic") / "shapes"
    return ensure_synthetic_dataset(root, num_train=24, num_val=10, image_size=96, seed=3)


@pytest.fixture
def small_data_cfg(shapes_root):
    """``config.data`` for the small synthetic dataset, sizes scaled to ~96 px."""
    from msvision.data.pipeline import default_data_config
    cfg = default_data_config()
    cfg.train.annotations = os.fspath(shapes_root / "train" / "instances.json")
    cfg.train.images = os.fspath(shapes_root / "train" / "images")
    cfg.val.annotations = os.fspath(shapes_root / "val" / "instances.json")
    cfg.val.images = os.fspath(shapes_root / "val" / "images")
    cfg.augment.scales = (64, 80, 96)
    cfg.augment.max_size = 128
    cfg.augment.crop_resize_scales = (80, 96)
    cfg.augment.crop_min = 48
    cfg.augment.crop_max = 80
    cfg.eval_scale = 96
    cfg.eval_max_size = 128
    cfg.bucket_divisor = 32
    cfg.batch_size = 4
    cfg.eval_batch_size = 4
    cfg.max_instances = 6
    cfg.num_threads = 1
    cfg.prefetch_buffer = 1
    return cfg
