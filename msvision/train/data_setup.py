"""Glue between ``config.data`` and the trainer: dataset preparation and iterators.

``config.data.synthetic`` asks for the built-in synthetic dataset
(:class:`msvision.data.pipeline.SyntheticConfig`). When enabled, :func:`dataset_info`
generates it if absent and points the ``data.train`` / ``data.val`` of its
``DatasetInfo.data_cfg`` at it (``annotations``/``images`` and the panoptic
split ``panoptic``/``panoptic_dir``, read with ``data.source='coco_panoptic'``), so
a fresh clone trains with no download.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import numpy as np

import msvision.data as data_lib
from msvision import config_sections
from msvision.data.classes import DATASET_FILE, ClassList, read_dataset_file, write_dataset_file
from msvision.data.pipeline import DatasetMetadata


@dataclasses.dataclass
class DatasetInfo:
    """Dataset metadata plus the sources, built once per run (``train_source`` is None
    when only evaluating)."""

    metadata: DatasetMetadata
    data_cfg: Any
    train_source: Any = None
    _val_source: Any = None

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    @property
    def num_train_images(self) -> int:
        return self.metadata.num_train_images

    @property
    def label_to_category(self):
        return self.metadata.label_to_category

    @property
    def class_names(self):
        return self.metadata.class_names

    @property
    def val_annotations(self) -> str:
        return self.metadata.val_annotations

    @property
    def val_source(self):
        if self._val_source is None:
            self._val_source = data_lib.build_source(self.data_cfg.val, self.data_cfg)
        return self._val_source


def prepare_synthetic(data_cfg):
    """``data_cfg`` itself, or, if ``data_cfg.synthetic.enabled``, a copy whose splits point at
    the synthetic dataset, generated first if absent (``data_cfg`` is unchanged)."""
    synthetic = data_cfg.synthetic
    if not synthetic.enabled:
        return data_cfg
    from msvision.data.synthetic import ensure_synthetic_dataset

    root = ensure_synthetic_dataset(
        synthetic.root,
        num_train=synthetic.num_train,
        num_val=synthetic.num_val,
        image_size=synthetic.image_size,
        seed=synthetic.seed,
        variant=synthetic.variant,
    )
    data_cfg = data_cfg.copy_and_resolve_references()
    for split in ("train", "val"):
        data_cfg[split].annotations = os.path.join(root, split, "instances.json")
        data_cfg[split].images = os.path.join(root, split, "images")
        data_cfg[split].panoptic = os.path.join(root, split, "panoptic.json")
        data_cfg[split].panoptic_dir = os.path.join(root, split, "panoptic")
    return data_cfg


def dataset_info(data_cfg) -> DatasetInfo:
    """The training run's dataset: metadata, the training source and ``DatasetInfo.data_cfg``,
    ``data_cfg`` resolved, with the synthetic dataset's paths filled in (:func:`prepare_synthetic`;
    ``data_cfg`` is unchanged)."""
    data_cfg = prepare_synthetic(config_sections.resolve_section("data", data_cfg))
    train_source = data_lib.build_source(data_cfg.train, data_cfg)
    return DatasetInfo(data_lib.dataset_metadata(data_cfg, train_source), data_cfg, train_source)


def save_dataset_metadata(info: DatasetInfo, workdir: str) -> None:
    """Writes the class list of a training run to ``WORKDIR/dataset.json``
    (:mod:`msvision.data.classes`), with ``label_is_thing`` when the training source is
    panoptic (it has ``label_is_thing``; prediction needs it for the panoptic
    post-processing)."""
    meta = info.metadata
    is_thing = getattr(info.train_source, "label_is_thing", None)
    classes = ClassList(tuple(meta.class_names), tuple(int(c) for c in meta.label_to_category),
                        None if is_thing is None else tuple(bool(t) for t in is_thing))
    write_dataset_file(workdir, classes, meta.num_train_images)


def eval_dataset_info(data_cfg, workdir: Optional[str] = None) -> DatasetInfo:
    """Dataset metadata for evaluation without reading the training annotations.

    The class list comes from ``WORKDIR/dataset.json`` when the run wrote one (so
    labels map to the categories the model was trained on), else from the
    validation split's own categories.
    """
    data_cfg = prepare_synthetic(config_sections.resolve_section("data", data_cfg))
    val_source = data_lib.build_source(data_cfg.val, data_cfg)
    if workdir and os.path.exists(os.path.join(workdir, DATASET_FILE)):
        saved = read_dataset_file(workdir)
        classes = ClassList.from_json(saved)
        num_train = int(saved.get("num_train_images", 0))
    else:
        classes = ClassList(tuple(val_source.class_names), tuple(int(c) for c in val_source.label_to_category))
        num_train = 0
    meta = DatasetMetadata(class_names=classes.class_names, label_to_category=classes.label_to_category,
                           num_train_images=max(num_train, 1),
                           val_annotations=data_cfg.val.annotations if data_cfg.source == "coco" else "")
    return DatasetInfo(meta, data_cfg, None, val_source)


def build_train_iterator(info: DatasetInfo, *, seed: int, shard_index: int, shard_count: int, start_step: int = 0):
    """This process's training batches from global batch ``start_step`` on
    (``msvision.data.pipeline.build_train_iterator``)."""
    return data_lib.build_train_iterator(
        info.data_cfg, seed=seed, shard_index=shard_index, shard_count=shard_count, start_step=start_step,
        source=info.train_source,
    )


def build_eval_iterator(info: DatasetInfo, *, shard_index: int, shard_count: int):
    return data_lib.build_eval_iterator(
        info.data_cfg, shard_index=shard_index, shard_count=shard_count, source=info.val_source
    )


def data_stats_metrics(info: DatasetInfo) -> dict[str, int]:
    """Bad-data counters of the training source (see ``msvision.data.stats``)."""
    return info.train_source.stats.as_dict("data/") if info.train_source is not None else {}


def save_data_faults(info: DatasetInfo, workdir: str) -> None:
    """Writes the names of the bad files and annotations met so far to
    ``WORKDIR/data_faults.json`` (counts are in the ``data/*`` metrics)."""
    if info.train_source is None:
        return
    report = info.train_source.stats.bad_files_report()
    if report:
        with open(os.path.join(workdir, "data_faults.json"), "w") as f:
            json.dump(report, f, indent=2)


def _val_record(info: DatasetInfo, image_id: int) -> dict:
    source = info.val_source
    index = list(source.image_ids).index(image_id)
    return source[index]


def load_original_image(info: DatasetInfo, image_id: int) -> np.ndarray:
    return _val_record(info, image_id)["image"]


def original_ground_truth(info: DatasetInfo, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    record = _val_record(info, image_id)
    return record["boxes"], record["labels"]
