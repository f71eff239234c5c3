"""grain input pipelines: training (shuffled, augmented, infinite) and evaluation.

Config section ``data``: :class:`DataConfig` (its fields, their defaults — COCO
scale, DETR's augmentation — and what they do), overridden by the files in
``configs/``.

Order and determinism. The training stream is a random-access grain
``MapDataset``: ``range(len(source)).seed(seed).shuffle().repeat()`` gives the
source index at every global position (grain reshuffles every epoch because
``repeat`` reseeds upstream random transformations); the record at position
``p`` is augmented with ``np.random.default_rng([seed, p])``. Global batch ``k``
is positions ``[k·B, (k+1)·B)``; process ``i`` of ``n`` reads positions
``≡ i (mod n)`` of it, so the processes' parts are disjoint, their union is the
global batch, and the batches do not depend on the number of processes (up to
order inside a batch). The bucket of a batch is chosen from the planned output
sizes of all images of the *global* batch (computed from the annotated image
sizes, without decoding), so every process pads to the same shape.

Checkpointing. :func:`build_train_iterator` returns a grain ``DatasetIterator``
whose ``get_state()``/``set_state()`` (or ``grain.checkpoint.CheckpointSave``/
``CheckpointRestore`` inside an orbax checkpoint) resume exactly where it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from msvision.config_schema import section_defaults
from msvision.data.batching import Bucket, choose_bucket, collate, default_buckets
from msvision.data.transforms import (EvalTransform, TrainTransform, apply_plan,
                                      default_scales, plan_output_size)

# A padding sample of an incomplete last evaluation batch (image_id = -1).
PADDING_IMAGE_SIZE = (32, 32)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Config sections ``data.train`` and ``data.val``: where one split is.

    Attributes:
      annotations: path of the COCO instances JSON (``source='coco'``); for ``val``
        also the file COCO evaluation (pycocotools) reads.
      images: folder of the image files.
      panoptic, panoptic_dir: panoptic JSON and PNG folder (``source='coco_panoptic'``).
      tfds_name, tfds_split, tfds_data_dir: TFDS dataset name (e.g. ``'coco/2017'``),
        split and data directory (``''`` = TFDS default) (``source='tfds'``).
    """

    annotations: str = ""
    images: str = ""
    panoptic: str = ""
    panoptic_dir: str = ""
    tfds_name: str = ""
    tfds_split: str = "train"
    tfds_data_dir: str = ""


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Config section ``data.augment``: the training augmentation
    (:mod:`msvision.data.transforms`, thesis section 2.4, DETR's).

    Attributes:
      hflip_prob: probability of a horizontal flip.
      scales: shortest-edge sizes to choose from (480…800 step 32).
      max_size: longest edge after the resize.
      crop_prob: probability of the resize–crop–resize branch.
      crop_resize_scales: shortest edges of its first resize.
      crop_min, crop_max: edge range of its random crop.
    """

    hflip_prob: float = 0.5
    scales: tuple[int, ...] = default_scales()
    max_size: int = 1333
    crop_prob: float = 0.5
    crop_resize_scales: tuple[int, ...] = (400, 500, 600)
    crop_min: int = 384
    crop_max: int = 600


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Config section ``data.synthetic``: the built-in synthetic dataset
    (:mod:`msvision.data.synthetic`); when ``enabled`` it is generated under ``root`` if
    absent and ``data.train``/``data.val`` point at it (:mod:`msvision.train.data_setup`).

    Attributes:
      enabled: use it.
      root: its folder.
      num_train, num_val: images per split.
      image_size: image edge in pixels.
      seed: generation seed.
      variant: ``'shapes'`` or ``'large'`` (:mod:`msvision.data.synthetic_large`).
    """

    enabled: bool = False
    root: str = "data/shapes"
    num_train: int = 600
    num_val: int = 100
    image_size: int = 224
    seed: int = 0
    variant: str = "shapes"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Config section ``data``: the dataset, its batches and the input pipeline.

    Attributes:
      source: ``'coco'`` (instances JSON + image folder, :class:`CocoSource`),
        ``'coco_panoptic'`` (panoptic JSON + PNG folder + image folder,
        :class:`PanopticSource`: the panoptic task, every non-crowd segment, thing or
        stuff, is a box + mask instance (thesis §5.5, as the released code); evaluation
        adds PQ) or ``'tfds'`` (:class:`TfdsSource`, boxes only).
      train, val: one split each (:class:`SplitConfig`).
      max_instances: ground-truth slots per image (``Batch.boxes.shape[1]``); images
        with more objects keep the largest boxes.
      batch_size: GLOBAL training batch size (all processes together); must be
        divisible by ``shard_count``, each process gets ``batch_size // shard_count``.
      eval_batch_size: GLOBAL evaluation batch size, same rule.
      augment: training augmentation (:class:`AugmentConfig`).
      eval_scale, eval_max_size: evaluation resize (shortest edge, longest at most).
      buckets: tuple of padded image shapes ``(H, W)``; ``()`` = automatic,
        :func:`msvision.data.batching.default_buckets` of ``max(augment.max_size,
        eval_max_size)`` (9 shapes, edges rounded up to ``bucket_divisor``).
      bucket_divisor: edge multiple of the automatic buckets (128 = stride of P7).
      num_threads: grain read threads per process (``ReadOptions.num_threads``).
      prefetch_buffer: batches prefetched per process
        (``ReadOptions.prefetch_buffer_size``; at least ``num_threads``).
      num_workers: grain multiprocessing workers (0 = threads only).
      with_masks: also produce ``Batch.masks``.
      mask_format: ``'image'`` (the padded full-image masks ``[B, M, H, W] bool``) or
        ``'box'`` (``[B, M, S, S] uint8`` coverage grids over each mask's box, boxes in
        ``Batch.mask_boxes``, S = ``box_mask_size``; :mod:`msvision.data.box_masks`).
      box_mask_size: S of ``mask_format='box'``.
      synthetic: the built-in synthetic dataset (:class:`SyntheticConfig`).
    """

    source: str = "coco"
    train: SplitConfig = SplitConfig()
    val: SplitConfig = SplitConfig(tfds_split="validation")
    max_instances: int = 100
    batch_size: int = 16
    eval_batch_size: int = 8
    augment: AugmentConfig = AugmentConfig()
    eval_scale: int = 800
    eval_max_size: int = 1333
    buckets: tuple[tuple[int, int], ...] = ()
    bucket_divisor: int = 128
    num_threads: int = 8
    prefetch_buffer: int = 8
    num_workers: int = 0
    with_masks: bool = False
    mask_format: str = "image"
    box_mask_size: int = 128
    synthetic: SyntheticConfig = SyntheticConfig()


def default_data_config() -> ml_collections.ConfigDict:
    """Every field of the ``data`` section at its default (:class:`DataConfig`)."""
    return section_defaults(DataConfig)


# ------------------------------------------------------------------ sources
def build_source(split_cfg, data_cfg):
    """The random-access source of one split (``data_cfg.train`` or ``.val``)."""
    from msvision.data.coco import CocoSource
    from msvision.data.panoptic import PanopticSource
    from msvision.data.tfds_source import TfdsSource

    kind = data_cfg.source
    if kind == "coco":
        return CocoSource(split_cfg.annotations, split_cfg.images,
                          with_masks=data_cfg.with_masks,
                          max_instances=data_cfg.max_instances)
    if kind == "coco_panoptic":
        return PanopticSource(split_cfg.panoptic, split_cfg.panoptic_dir, split_cfg.images,
                              with_masks=data_cfg.with_masks,
                              max_instances=data_cfg.max_instances, drop_crowd=True)
    if kind == "tfds":
        return TfdsSource(split_cfg.tfds_name, split_cfg.tfds_split, split_cfg.tfds_data_dir,
                          max_instances=data_cfg.max_instances,
                          with_masks=data_cfg.with_masks)
    raise ValueError(f"unknown data.source {kind!r} (coco | coco_panoptic | tfds)")


def buckets_for(data_cfg) -> list[Bucket]:
    """The bucket shapes of ``data_cfg`` (explicit, or automatic when empty)."""
    if data_cfg.buckets:
        return [tuple(int(v) for v in b) for b in data_cfg.buckets]
    return default_buckets(max(data_cfg.augment.max_size, data_cfg.eval_max_size),
                           data_cfg.bucket_divisor)


def _local_batch_size(global_batch_size: int, shard_count: int) -> int:
    if global_batch_size % shard_count:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by "
                         f"{shard_count} processes")
    return global_batch_size // shard_count


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The augmentation generator of the sample at global ``position``."""
    return np.random.default_rng([seed, position])


# ------------------------------------------------------------ train pipeline
class _LoadTrainSample:
    """``(position, source_index) -> record``: read and augment (picklable)."""

    def __init__(self, source, transform: TrainTransform, seed: int):
        self.source, self.transform, self.seed = source, transform, seed

    def __call__(self, position: int, index: int) -> dict[str, Any]:
        record = self.source[index]
        plan = self.transform.plan(record["image"].shape[:2], sample_rng(self.seed, position))
        record = apply_plan(record, plan)
        record["position"] = position
        return record


class _TrainCollator:
    """``batch_fn``: pad local samples to the bucket of their global batch."""

    def __init__(self, order, source, transform, seed, global_batch_size, buckets,
                 max_instances, with_masks, mask_format, box_mask_size):
        self.order, self.source, self.transform = order, source, transform
        self.seed, self.global_batch_size, self.buckets = seed, global_batch_size, buckets
        self.max_instances, self.with_masks = max_instances, with_masks
        self.mask_format, self.box_mask_size = mask_format, box_mask_size

    def global_sizes(self, batch_index: int) -> list[tuple[int, int]]:
        """Planned output sizes of every image of global batch ``batch_index``."""
        sizes = []
        start = batch_index * self.global_batch_size
        for position in range(start, start + self.global_batch_size):
            size = self.source.image_size(self.order[position])
            plan = self.transform.plan(size, sample_rng(self.seed, position))
            sizes.append(plan_output_size(size, plan))
        return sizes

    def __call__(self, records: Sequence[dict[str, Any]]):
        batch_index = records[0]["position"] // self.global_batch_size
        bucket = choose_bucket(self.global_sizes(batch_index), self.buckets)
        return collate(records, bucket, self.max_instances, self.with_masks, self.mask_format,
                       self.box_mask_size)


def _to_iterator(dataset: grain.MapDataset, data_cfg) -> grain.DatasetIterator:
    iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=data_cfg.num_threads, prefetch_buffer_size=data_cfg.prefetch_buffer))
    if data_cfg.num_workers > 0:
        # grain <= 0.2.18 reads an absl flag in mp_prefetch and fails outside
        # absl.app when flags are unparsed (google/grain#1355, fixed upstream by
        # falling back to the defaults, which is what this does).
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
    return iter(iter_dataset)


def train_dataset(data_cfg, *, seed: int, shard_index: int = 0, shard_count: int = 1,
                  source=None) -> grain.MapDataset:
    """The infinite ``MapDataset`` of this process's training batches."""
    source = source if source is not None else build_source(data_cfg.train, data_cfg)
    local_batch_size = _local_batch_size(data_cfg.batch_size, shard_count)
    transform = TrainTransform(data_cfg.augment)
    # position -> source index; a new permutation every epoch.
    order = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat()
    samples = order.map_with_index(_LoadTrainSample(source, transform, seed))
    local = samples[shard_index::shard_count]
    collator = _TrainCollator(order, source, transform, seed, data_cfg.batch_size,
                              buckets_for(data_cfg), data_cfg.max_instances,
                              data_cfg.with_masks, data_cfg.mask_format, data_cfg.box_mask_size)
    return local.batch(local_batch_size, drop_remainder=True, batch_fn=collator)


def build_train_iterator(data_cfg, *, seed: int, shard_index: int = 0,
                         shard_count: int = 1, start_step: int = 0,
                         source=None) -> grain.DatasetIterator:
    """Iterator over this process's share of the global training batches.

    Args:
      data_cfg: ``config.data``.
      seed: data seed (order and augmentation); the same on every process.
      shard_index, shard_count: this process and the number of processes
        (``jax.process_index()``, ``jax.process_count()``).
      start_step: first batch to yield. The iterator's ``get_state()`` counts from
        there: restore a saved state into an iterator built with the same
        ``start_step`` (normally 0) — or use ``start_step`` alone to resume
        without a saved data state.
      source: a prebuilt training source (avoids parsing the annotations twice;
        its ``stats`` then hold the data counters).

    Yields:
      :class:`msvision.structures.Batch` of numpy arrays, ``batch_size //
      shard_count`` images each.
    """
    dataset = train_dataset(data_cfg, seed=seed, shard_index=shard_index,
                            shard_count=shard_count, source=source)
    if start_step:
        dataset = dataset[start_step:]
    return _to_iterator(dataset, data_cfg)


# ------------------------------------------------------------- eval pipeline
class _LoadEvalSample:
    """``position -> record``; positions past the dataset give padding samples."""

    def __init__(self, source, transform: EvalTransform):
        self.source, self.transform = source, transform

    def __call__(self, position: int) -> dict[str, Any]:
        position = int(position)
        if position >= len(self.source):
            return padding_record(position)
        record = self.transform(self.source[position])
        record["position"] = position
        return record


def padding_record(position: int = -1) -> dict[str, Any]:
    """An empty sample with ``image_id = -1`` (fills the last evaluation batch)."""
    return {
        "image": np.zeros(PADDING_IMAGE_SIZE + (3,), np.uint8),
        "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros((0,), np.int32),
        "is_crowd": np.zeros((0,), bool), "masks": np.zeros((0,) + PADDING_IMAGE_SIZE, bool),
        "image_id": -1, "orig_size": PADDING_IMAGE_SIZE, "file_name": "", "position": position,
    }


class _EvalCollator:
    def __init__(self, source, transform, global_batch_size, buckets, max_instances,
                 with_masks, mask_format, box_mask_size):
        self.source, self.transform = source, transform
        self.global_batch_size, self.buckets = global_batch_size, buckets
        self.max_instances, self.with_masks = max_instances, with_masks
        self.mask_format, self.box_mask_size = mask_format, box_mask_size

    def __call__(self, records):
        start = records[0]["position"] // self.global_batch_size * self.global_batch_size
        sizes = [plan_output_size(self.source.image_size(p),
                                  self.transform.plan(self.source.image_size(p)))
                 if p < len(self.source) else PADDING_IMAGE_SIZE
                 for p in range(start, start + self.global_batch_size)]
        return collate(records, choose_bucket(sizes, self.buckets), self.max_instances,
                       self.with_masks, self.mask_format, self.box_mask_size)


def eval_dataset(data_cfg, *, shard_index: int = 0, shard_count: int = 1,
                 source=None) -> grain.MapDataset:
    """The finite ``MapDataset`` of this process's evaluation batches."""
    source = source if source is not None else build_source(data_cfg.val, data_cfg)
    global_batch_size = data_cfg.eval_batch_size
    local_batch_size = _local_batch_size(global_batch_size, shard_count)
    num_batches = -(-len(source) // global_batch_size)
    transform = EvalTransform(data_cfg.eval_scale, data_cfg.eval_max_size)
    positions = grain.MapDataset.range(num_batches * global_batch_size)
    samples = positions.map(_LoadEvalSample(source, transform))
    local = samples[shard_index::shard_count]
    return local.batch(local_batch_size, drop_remainder=True, batch_fn=_EvalCollator(
        source, transform, global_batch_size, buckets_for(data_cfg),
        data_cfg.max_instances, data_cfg.with_masks, data_cfg.mask_format, data_cfg.box_mask_size))


def build_eval_iterator(data_cfg, *, shard_index: int = 0, shard_count: int = 1,
                        source=None) -> grain.DatasetIterator:
    """Iterator over this process's share of the evaluation batches: every image
    once, in dataset order, no augmentation; the last global batch is completed
    with padding samples (``image_ids == -1``). Every process yields the same
    number of batches."""
    return _to_iterator(eval_dataset(data_cfg, shard_index=shard_index,
                                     shard_count=shard_count, source=source), data_cfg)
