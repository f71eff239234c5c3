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


@dataclasses.dataclass
class DatasetInfo:
    """A run's dataset, built once per run: what ``WORKDIR/dataset.json`` records (the
    classes and the training-set size), the resolved ``config.data`` and the sources.

    Attributes:
      classes: the model's classes (the training source's; when evaluating, the run's
        ``dataset.json``'s).
      num_train_images: images in the training split (epochs → steps).
      data_cfg: the resolved ``config.data``.
      train_source: None when only evaluating.
    """

    classes: ClassList
    num_train_images: int
    data_cfg: Any
    train_source: Any = None
    _val_source: Any = None

    @property
    def val_annotations(self) -> str:
        """The validation instances JSON (pycocotools ground truth) of a ``'coco'`` source, else ''."""
        return self.data_cfg.val.annotations if self.data_cfg.source == "coco" else ""

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
    """The training run's dataset: the training source, its classes and size, and
    ``DatasetInfo.data_cfg``, ``data_cfg`` resolved, with the synthetic dataset's paths filled in
    (:func:`prepare_synthetic`; ``data_cfg`` is unchanged)."""
    data_cfg = prepare_synthetic(config_sections.resolve_section("data", data_cfg))
    train_source = data_lib.build_source(data_cfg.train, data_cfg)
    return DatasetInfo(train_source.classes, len(train_source), data_cfg, train_source)


def save_dataset_file(info: DatasetInfo, workdir: str) -> None:
    """Writes the classes and training-set size of a training run to ``WORKDIR/dataset.json``
    (:mod:`msvision.data.classes`); a panoptic source's classes carry ``label_is_thing``, which
    prediction needs for the panoptic post-processing."""
    write_dataset_file(workdir, info.classes, info.num_train_images)


def eval_dataset_info(data_cfg, workdir: Optional[str] = None) -> DatasetInfo:
    """The dataset of an evaluation, without reading the training annotations.

    The class list comes from ``WORKDIR/dataset.json`` when the run wrote one (so
    labels map to the categories the model was trained on), else from the
    validation split's own categories.
    """
    data_cfg = prepare_synthetic(config_sections.resolve_section("data", data_cfg))
    val_source = data_lib.build_source(data_cfg.val, data_cfg)
    if workdir and os.path.exists(os.path.join(workdir, DATASET_FILE)):
        classes, num_train = read_dataset_file(workdir)
    else:
        classes, num_train = val_source.classes, 0
    return DatasetInfo(classes, max(num_train, 1), data_cfg, None, val_source)


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
