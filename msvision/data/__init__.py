"""Datasets, augmentation and grain input pipelines (see ``data/README.md``)."""

from msvision.data.batching import choose_bucket, collate, default_buckets
from msvision.data.classes import ClassList
from msvision.data.coco import CocoSource
from msvision.data.panoptic import PanopticSource
from msvision.data.pipeline import (DataConfig, build_eval_iterator, build_source, build_train_iterator,
                                    buckets_for, default_data_config, eval_dataset, train_dataset)
from msvision.data.stats import DataStats
from msvision.data.transforms import EvalTransform, TrainTransform

__all__ = [
    "ClassList", "CocoSource", "DataConfig", "DataStats", "EvalTransform", "PanopticSource",
    "TfdsSource", "TrainTransform", "build_eval_iterator", "build_source",
    "build_train_iterator", "buckets_for", "choose_bucket", "collate",
    "convert_coco_to_tfds", "default_buckets", "default_data_config",
    "ensure_synthetic_dataset", "eval_dataset", "generate_synthetic_dataset",
    "train_dataset",
]


# Modules that also run as scripts (``python -m msvision.data.synthetic``,
# ``python -m msvision.data.tfds_source``) are imported on first use, so that
# running them does not import them twice.
_LAZY = {
    "ensure_synthetic_dataset": "msvision.data.synthetic",
    "generate_synthetic_dataset": "msvision.data.synthetic",
    "TfdsSource": "msvision.data.tfds_source",
    "convert_coco_to_tfds": "msvision.data.tfds_source",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'msvision.data' has no attribute {name!r}")
