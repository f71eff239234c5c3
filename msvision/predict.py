"""Detections for image files or arrays from a trained model.

Command line::

    python -m msvision.predict --config=configs/X.py --workdir=DIR IMAGES_OR_FOLDERS... --out OUT \\
        [--batch-size N] [--score-threshold S] [--mask-threshold M] [--no-pictures] [--step N] \
        [--config.a.b=v ...]
    python -m msvision.predict --exported model.jaxexport IMAGES_OR_FOLDERS... --out OUT

writes ``OUT/predictions.json``, a list with one entry per readable image, in
input order::

    {"file_name": "imgs/a.jpg", "width": 640, "height": 480, "picture": "a.jpg",
     "detections": [{"bbox": [x, y, w, h], "score": 0.93, "category_id": 18, "category": "dog"}, ...]}

(``bbox`` in pixels of the image as people see it: the EXIF orientation of a photo
stored sideways is applied, and ``width``/``height`` are in that orientation; COCO's
``(x, y, width, height)``;
``category_id`` is the dataset's id, ``category`` its name), one picture per
image with the detections drawn (``picture``; not with ``--no-pictures``), and
``OUT/summary.json`` with the files that were skipped because they could not be
read (``skipped``: ``[{"file_name", "error"}]`` with the reason, e.g. ``"no such file"``,
``"not an image file Pillow can read"``, ``"cannot decode it (Truncated File Read)"``;
also reported on stderr, so ``num_images + len(skipped)`` accounts for every input), the
number of compiled input shapes and the timing.

A model with a segmentation head (``model.seg_head``) adds to each detection its
mask at the image file's size, pasted and thresholded (``p > --mask-threshold``,
0.5) by evaluation's :func:`msvision.evaluation.masks.paste_masks_numpy`:
``"segmentation"``, a COCO RLE ``{"size": [h, w], "counts": str}`` (the format of
evaluation's ``results_<step>.json``), and ``"area"`` (pixels); the pictures blend
the masks. A panoptic config (``data.source='coco_panoptic'``) adds per image the
post-processing of its ``eval.panoptic`` section
(:mod:`msvision.evaluation.panoptic_postprocess`, on all valid detections, as
evaluation): ``"panoptic": {"file_name": "a.png", "segments_info": [{"id",
"category_id", "iscrowd", "isthing", "score", "area", "bbox"}, ...]}``, the PNG in
``OUT/panoptic/`` in COCO panoptic format (id = R + 256·G + 256²·B, 0 = void), and
the pictures show the panoptic map. The classes' ``isthing`` come from
``dataset.json`` (``label_is_thing``) or the config's panoptic JSON
(:func:`panoptic_class_list`).

Python::

    from msvision.predict import Predictor
    predictor = Predictor.from_workdir("configs/quickstart.py", "runs/quickstart")
    detections = predictor(image)  # image: [H, W, 3] uint8 RGB, any size -> list of dicts as above
    detections = predictor(image, masks="array")  # masks as [H, W] bool arrays ("mask"), not RLEs
    ids, segments_info = predictor.panoptic_segmentation(image)  # panoptic configs

Images of any size are resized as in evaluation (shortest edge
``data.eval_scale``, longest at most ``data.eval_max_size``) and zero-padded
into the smallest configured bucket that holds them (a bucket rounded up to
``data.bucket_divisor`` when none does), so the number of compiled shapes is
bounded by the number of buckets; every layer is padding-aware, so an image's
detections do not depend on its bucket or on the other images of its batch.
Restoring needs the work directory's checkpoint and ``dataset.json`` (the class
list, written by ``train.py``), not the training data.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from msvision.data.batching import Bucket, choose_bucket, collate
from msvision.data.image_files import list_image_files
from msvision.data.images import read_image, read_image_size
from msvision.data.transforms import resized_size
from msvision.train.data_setup import ClassList, read_class_list

log = logging.getLogger(__name__)

DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_MASK_THRESHOLD = 0.5  # evaluation's (msvision.evaluation.masks.detection_image_masks)
MASK_FORMATS = ("rle", "array", "none")
PANOPTIC_DIR = "panoptic"  # OUT/panoptic/<stem>.png: the COCO panoptic PNGs of a panoptic config
# Detections as arrays: boxes [B, K, 4] float32 (x0, y0, x1, y1) in original-image pixels,
# scores [B, K] float32, labels [B, K] int32 contiguous, valid [B, K] bool; with a segmentation
# head also masks [B, K, S, S] float32 probabilities on mask_boxes [B, K, 4] (original pixels).
DetectFn = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]


def make_detect_function(graphdef, weights_treedef) -> Callable:
    """The pure inference function of a model, shared by live prediction and export.

    Returns ``detect(weights, images, image_sizes, orig_sizes) -> dict`` with

    - ``weights``: the flat leaves of ``(params, rest)`` (``weights_treedef`` unflattens them);
    - ``images``: ``[B, H, W, 3] uint8`` RGB, resized and zero-padded at the bottom/right;
    - ``image_sizes``: ``[B, 2] int32`` ``(h, w)`` of the resized image inside the padding;
    - ``orig_sizes``: ``[B, 2] int32`` ``(h, w)`` of the image file;

    and the output ``{"boxes": [B, K, 4] float32 (x0, y0, x1, y1) in original
    pixels, "scores": [B, K] float32, "labels": [B, K] int32, "valid": [B, K] bool}``;
    a model with a segmentation head (``model.seg_head``) adds ``"masks": [B, K, S, S]
    float32`` probabilities, each on the S × S split of ``"mask_boxes": [B, K, 4] float32``
    ``(x0, y0, x1, y1)`` in original pixels (unclipped; ``Detections.masks``).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from msvision.structures import Batch

    def detect(weights, images, image_sizes, orig_sizes):
        params, rest = jax.tree.unflatten(weights_treedef, list(weights))
        model = nnx.merge(graphdef, params, rest)
        b = images.shape[0]
        batch = Batch(  # ground truth is not read by predict: one empty slot
            images=images, image_sizes=image_sizes, orig_sizes=orig_sizes,
            image_ids=jnp.zeros((b,), jnp.int32), boxes=jnp.zeros((b, 1, 4), jnp.float32),
            labels=jnp.zeros((b, 1), jnp.int32), valid=jnp.zeros((b, 1), bool),
            is_crowd=jnp.zeros((b, 1), bool))
        dets = model.predict(batch)
        out = dict(boxes=dets.boxes, scores=dets.scores, labels=dets.labels, valid=dets.valid)
        if dets.masks is not None:
            out.update(masks=dets.masks.astype(jnp.float32), mask_boxes=dets.mask_boxes.astype(jnp.float32))
        return out

    return detect


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The evaluation resize and the bucket an image is padded into.

    Attributes:
      eval_scale, eval_max_size: shortest edge after resizing, cap on the longest.
      buckets: ``(H, W)`` padded shapes to choose from.
      bucket_divisor: edge multiple of a bucket made for an image no bucket holds.
      allow_new_buckets: make such a bucket (a new compile); otherwise the image
        is shrunk into the largest bucket (exported models have fixed shapes).
    """

    eval_scale: int
    eval_max_size: int
    buckets: tuple[Bucket, ...]
    bucket_divisor: int = 128
    allow_new_buckets: bool = True

    @classmethod
    def from_config(cls, data_cfg) -> "Preprocessing":
        from msvision.data.pipeline import buckets_for

        return cls(int(data_cfg.eval_scale), int(data_cfg.eval_max_size), tuple(buckets_for(data_cfg)),
                   int(data_cfg.bucket_divisor))

    def network_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of an image of ``size`` after the evaluation resize.

        DETR's rounding can put the longest edge of a very elongated image one
        pixel above ``eval_max_size`` (37×300 → 16×129 for 96/128); it is capped,
        so that such an image does not need a bucket of its own.
        """
        h, w = resized_size(size, self.eval_scale, self.eval_max_size)
        return min(h, self.eval_max_size), min(w, self.eval_max_size)

    def bucket(self, sizes: Sequence[tuple[int, int]]) -> Bucket:
        """The bucket for images of network sizes ``sizes`` (see the class docstring)."""
        need = (max(h for h, _ in sizes), max(w for _, w in sizes))
        if any(b[0] >= need[0] and b[1] >= need[1] for b in self.buckets) or not self.allow_new_buckets:
            return choose_bucket(sizes, self.buckets)
        d = self.bucket_divisor
        return (d * math.ceil(need[0] / d), d * math.ceil(need[1] / d))

    def record(self, image: np.ndarray) -> dict[str, Any]:
        """A record (see :func:`msvision.data.batching.collate`) of ``image`` resized for the network."""
        from PIL import Image

        orig = image.shape[:2]
        size = self.network_size(orig)
        if size != orig:
            image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
        return {"image": image, "orig_size": orig, "image_id": 0, "boxes": np.zeros((0, 4), np.float32),
                "labels": np.zeros((0,), np.int32), "is_crowd": np.zeros((0,), bool)}


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` → ``[H, W, 3] uint8`` RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype} (scale to 0..255 and convert first)")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an image of shape [H, W, 3], got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def kept_detections(scores: np.ndarray, valid: np.ndarray, score_threshold: float) -> np.ndarray:
    """Indices of the valid detections with ``scores >= score_threshold`` (``[K]`` arrays), in order."""
    return np.flatnonzero(np.asarray(valid, bool) & (np.asarray(scores) >= score_threshold))


def paste_detection_masks(dets: dict[str, np.ndarray], keep: np.ndarray, size: tuple[int, int],
                          threshold: float = DEFAULT_MASK_THRESHOLD) -> np.ndarray:
    """``[len(keep), h, w] bool`` masks of detections ``keep`` of one image, pasted at ``size = (h, w)``.

    ``dets["masks"]``: ``[K, S, S]`` float32 probabilities on ``dets["mask_boxes"]``
    ``[K, 4]`` ``(x0, y0, x1, y1)`` original pixels; pasted and thresholded
    (``p > threshold``) by evaluation's :func:`msvision.evaluation.masks.paste_masks_numpy`,
    only for the detections kept (a full-image mask per candidate would cost
    ``K × h × w`` bytes).
    """
    from msvision.evaluation.masks import paste_masks_numpy

    h, w = (int(v) for v in size)
    if not len(keep):
        return np.zeros((0, h, w), bool)
    return paste_masks_numpy(dets["masks"][keep], dets["mask_boxes"][keep], h, w, threshold)


def detections_to_dicts(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, valid: np.ndarray,
                        classes: ClassList, score_threshold: float, *, masks: Optional[np.ndarray] = None,
                        mask_format: str = "rle") -> list[dict]:
    """One image's detections as ``[{"bbox": [x, y, w, h], "score", "category_id", "category"}]``.

    Args:
      boxes: ``[K, 4]`` ``(x0, y0, x1, y1)`` in original pixels; scores ``[K]``;
        labels ``[K]`` contiguous; valid ``[K]`` bool.
      masks: optional ``[N, h, w] bool`` full-image masks of the ``N`` detections kept
        (:func:`kept_detections`, same order), e.g. :func:`paste_detection_masks`.
      mask_format: with ``masks``, ``"rle"`` adds ``"segmentation"``, the COCO RLE
        ``{"size": [h, w], "counts": str}`` (``pycocotools.mask.encode``, as
        evaluation's ``results_<step>.json``), ``"array"`` adds ``"mask"``, the
        ``[h, w] bool`` array; both add ``"area"`` (mask pixels). ``"none"``: neither.
    """
    from msvision.evaluation.coco_eval import mask_to_rle

    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    keep = kept_detections(scores, valid, score_threshold)
    if masks is not None and len(masks) != len(keep):
        raise ValueError(f"{len(masks)} masks for {len(keep)} kept detections")
    out = []
    for i, k in enumerate(keep):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        label = int(labels[k])
        det = {
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(scores[k]), 5),
            "category_id": classes.label_to_category[label],
            "category": classes.class_names[label],
        }
        if masks is not None and mask_format != "none":
            if mask_format == "rle":
                det["segmentation"] = mask_to_rle(masks[i])
            else:
                det["mask"] = np.asarray(masks[i], bool)
            det["area"] = int(np.count_nonzero(masks[i]))
        out.append(det)
    return out


def panoptic_class_list(classes: ClassList, data_cfg) -> ClassList:
    """``classes`` with ``label_is_thing`` (the panoptic post-processing needs it).

    From ``dataset.json`` (written by ``train.py`` for a panoptic dataset); for a run
    whose ``dataset.json`` predates that key, from the ``categories`` (``isthing``) of
    the config's panoptic JSON (``data.val.panoptic``, else ``data.train.panoptic``; with
    ``data.synthetic.enabled``, the generated dataset's ``ROOT/{val,train}/panoptic.json``).

    Raises:
      FileNotFoundError: neither has them (the message says what to add).
    """
    if classes.label_is_thing is not None:
        return classes
    tried = []
    synthetic = data_cfg.get("synthetic", {}) or {}
    for split in ("val", "train"):
        path = data_cfg.get(split, {}).get("panoptic", "") or ""
        if synthetic.get("enabled", False):  # the generated dataset's panoptic split (data_setup.prepare_synthetic)
            path = os.path.join(synthetic.get("root", ""), split, "panoptic.json")
        if path:
            tried.append(path)
        if path and os.path.isfile(path):
            with open(path) as f:
                isthing = {int(c["id"]): bool(c.get("isthing", 1)) for c in json.load(f)["categories"]}
            missing = [c for c in classes.label_to_category if c not in isthing]
            if missing:
                raise KeyError(f"model categories {missing[:5]} are not panoptic categories of {path}")
            return dataclasses.replace(classes, label_is_thing=tuple(isthing[c] for c in classes.label_to_category))
    raise FileNotFoundError(
        "a panoptic config needs each class's isthing: add \"label_is_thing\": [true, ..., false] (one per class) "
        f"to the work directory's dataset.json, or make the config's panoptic JSON readable (tried {tried})")


def panoptic_settings(config) -> Optional["PanopticPostProcess"]:
    """The panoptic post-processing of ``config`` (``eval.panoptic``) when ``data.source`` is
    ``'coco_panoptic'``, else None. ``config``: a ``ConfigDict`` or its ``to_dict()``."""
    from msvision.evaluation.panoptic_postprocess import PanopticPostProcess

    data = config.get("data", {}) or {}
    if data.get("source") != "coco_panoptic":
        return None
    section = (config.get("eval", {}) or {}).get("panoptic", None)
    if section is not None and hasattr(section, "to_dict"):
        section = section.to_dict()
    return PanopticPostProcess(**(section or {}))


class Predictor:
    """Runs a detector on images of any size; see the module docstring.

    Args:
      detect: ``(images, image_sizes, orig_sizes) -> {"boxes", "scores", "labels", "valid"}``
        (+ ``"masks"``, ``"mask_boxes"`` with a segmentation head) on numpy arrays
        (:func:`make_detect_function` with the weights bound, or a deserialised export).
      classes: the model's class list (with ``label_is_thing`` for ``panoptic``).
      preprocessing: resize and buckets.
      batch_size: images per call of ``detect``; a partial batch is padded, so
        each bucket compiles once. ``None``: any size (an export with a symbolic
        batch dimension).
      score_threshold: detections below it are left out of the outputs.
      mask_threshold: a pasted mask probability above it is foreground (0.5 as evaluation).
      panoptic: the panoptic post-processing (``eval.panoptic`` of a panoptic config,
        :func:`panoptic_settings`); None for instance outputs only.
    """

    def __init__(self, detect: DetectFn, classes: ClassList, preprocessing: Preprocessing, *,
                 batch_size: int = 1, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 mask_threshold: float = DEFAULT_MASK_THRESHOLD, panoptic: Optional[Any] = None):
        if panoptic is not None and classes.label_is_thing is None:
            raise ValueError("panoptic prediction needs classes.label_is_thing (see panoptic_class_list)")
        self.detect = detect
        self.classes = classes
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.panoptic = panoptic
        self.shapes_seen: set[tuple[int, ...]] = set()
        self.step: Optional[int] = None  # checkpoint step, when known

    # ------------------------------------------------------------ construction
    @classmethod
    def from_workdir(cls, config, workdir: str, step: Optional[int] = None, *, overrides: Sequence[str] = (),
                     batch_size: int = 1, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                     mask_threshold: float = DEFAULT_MASK_THRESHOLD) -> "Predictor":
        """The model of ``workdir``'s checkpoint (latest unless ``step``).

        A panoptic config (``data.source='coco_panoptic'``) also gets the panoptic
        post-processing of its ``eval.panoptic`` section.

        Args:
          config: a config file path (``overrides`` applied) or a ``ConfigDict``.

        Raises:
          FileNotFoundError: no checkpoint, or no ``WORKDIR/dataset.json`` (the
            class list), or a panoptic config without the classes' ``isthing``
            (:func:`panoptic_class_list`); the message names what is missing.
        """
        import jax

        from msvision import config as config_lib
        from msvision.train.loop import restore_for_inference

        if isinstance(config, (str, os.PathLike)):
            config = config_lib.load_config(os.fspath(config), overrides)
        classes = read_class_list(workdir)
        panoptic = panoptic_settings(config)
        if panoptic is not None:
            classes = panoptic_class_list(classes, config.data)
        graphdef, params, rest, step = restore_for_inference(config, workdir, classes.num_classes, step)
        weights, treedef = jax.tree.flatten((params, rest))
        detect = jax.jit(make_detect_function(graphdef, treedef))

        def run(images, image_sizes, orig_sizes):
            return jax.device_get(detect(weights, images, image_sizes, orig_sizes))

        predictor = cls(run, classes, Preprocessing.from_config(config.data), batch_size=batch_size,
                        score_threshold=score_threshold, mask_threshold=mask_threshold, panoptic=panoptic)
        predictor.step = step
        return predictor

    @classmethod
    def from_exported(cls, path: str, *, batch_size: Optional[int] = None,
                      score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                      mask_threshold: float = DEFAULT_MASK_THRESHOLD) -> "Predictor":
        """The model of a ``.jaxexport`` file (:mod:`msvision.export`); needs no config or checkpoint.

        ``batch_size`` must be the exported one for a static batch dimension;
        with a symbolic one it is free (``None``: 1). The panoptic settings come
        from the config stored in the manifest.
        """
        from msvision.export import load_exported

        exported = load_exported(path)
        if exported.batch_size is not None:
            if batch_size not in (None, exported.batch_size):
                raise ValueError(f"{path} was exported for batches of {exported.batch_size}, not {batch_size}")
            batch_size = exported.batch_size
        config = exported.manifest.get("config") or {}
        panoptic = panoptic_settings(config)
        classes = exported.classes
        if panoptic is not None:  # an export older than label_is_thing in the manifest: the config's JSON
            classes = panoptic_class_list(classes, config.get("data", {}))
        predictor = cls(exported, classes, exported.preprocessing, batch_size=batch_size or 1,
                        score_threshold=score_threshold, mask_threshold=mask_threshold, panoptic=panoptic)
        predictor.step = exported.step
        return predictor

    # ------------------------------------------------------------ arrays
    @property
    def num_compiled_shapes(self) -> int:
        """Distinct ``[B, H, W, 3]`` inputs given to ``detect`` so far (each compiled once)."""
        return len(self.shapes_seen)

    def __call__(self, image: np.ndarray, masks: str = "rle") -> list[dict]:
        """Detections of one ``[H, W, 3] uint8`` RGB image (see :func:`detections_to_dicts`).

        With a segmentation head each detection also has its mask at the image's
        size: ``masks="rle"`` a COCO RLE ``"segmentation"``, ``masks="array"`` a
        ``[H, W] bool`` array ``"mask"`` (both with ``"area"``), ``masks="none"`` neither.
        """
        return self.predict_arrays([image], masks=masks)[0]

    def predict_arrays(self, images: Sequence[np.ndarray], masks: str = "rle") -> list[list[dict]]:
        """Detections of each image (``[H, W, 3] uint8`` RGB, any sizes); ``masks`` as in :meth:`__call__`."""
        return self._predict_arrays(images, lambda dets: self._to_dicts(dets, masks)[0])

    def panoptic_segmentation(self, image: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """The panoptic segmentation of one ``[H, W, 3] uint8`` RGB image (a panoptic config):
        ``ids [H, W] int32`` (0 = void) and its COCO ``segments_info`` (``id``,
        ``category_id`` (the dataset's), ``iscrowd``, ``isthing``, ``score``, ``area``,
        ``bbox`` ``[x, y, w, h]``), from :mod:`msvision.evaluation.panoptic_postprocess`."""
        if self.panoptic is None:
            raise ValueError("not a panoptic predictor (the config's data.source is not 'coco_panoptic')")
        return self._predict_arrays([image], self._panoptic)[0]

    def _predict_arrays(self, images: Sequence[np.ndarray], convert: Callable[[dict], Any]) -> list:
        """``convert`` of each image's arrays (:meth:`_run`), images batched by bucket."""
        records = [self.preprocessing.record(as_rgb_uint8(im)) for im in images]
        outputs = [None] * len(records)
        for group in self._batches([r["image"].shape[:2] for r in records]):
            for i, dets in zip(group, self._run([records[i] for i in group])):
                outputs[i] = convert(dets)
        return outputs

    def _batches(self, network_sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
        """Indices grouped by bucket (in first-seen order), in chunks of ``batch_size``."""
        groups: dict[Bucket, list[int]] = {}
        for i, size in enumerate(network_sizes):
            groups.setdefault(self.preprocessing.bucket([size]), []).append(i)
        return [idx[s:s + self.batch_size] for idx in groups.values() for s in range(0, len(idx), self.batch_size)]

    def _run(self, records: list[dict]) -> list[dict[str, np.ndarray]]:
        """Runs ``detect`` on one padded batch; returns each record's arrays (``detect``'s
        outputs and ``image_size``, ``orig_size`` ``[2]`` (h, w) at the network input and originally)."""
        from msvision.data.pipeline import padding_record

        bucket = self.preprocessing.bucket([r["image"].shape[:2] for r in records])
        padded = list(records) + [padding_record()] * (self.batch_size - len(records))
        batch = collate(padded, bucket, max_instances=1)
        self.shapes_seen.add(batch.images.shape)
        out = self.detect(batch.images, batch.image_sizes, batch.orig_sizes)
        keys = ("boxes", "scores", "labels", "valid") + (("masks", "mask_boxes") if "masks" in out else ())
        out = {k: np.asarray(out[k]) for k in keys}
        out["image_size"], out["orig_size"] = np.asarray(batch.image_sizes), np.asarray(batch.orig_sizes)
        return [{k: v[i] for k, v in out.items()} for i in range(len(records))]

    def _to_dicts(self, dets: dict[str, np.ndarray], mask_format: str = "rle"
                  ) -> tuple[list[dict], Optional[np.ndarray]]:
        """One image's detection dicts and (with a segmentation head, unless ``mask_format``
        is ``"none"``) the ``[N, h, w] bool`` masks of the ``N`` dicts at the original size."""
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"masks must be one of {MASK_FORMATS}, got {mask_format!r}")
        masks = None
        if "masks" in dets and mask_format != "none":
            keep = kept_detections(dets["scores"], dets["valid"], self.score_threshold)
            masks = paste_detection_masks(dets, keep, tuple(dets["orig_size"]), self.mask_threshold)
        dicts = detections_to_dicts(dets["boxes"], dets["scores"], dets["labels"], dets["valid"], self.classes,
                                    self.score_threshold, masks=masks, mask_format=mask_format)
        return dicts, masks

    def _panoptic(self, dets: dict[str, np.ndarray]) -> Optional[tuple[np.ndarray, list[dict]]]:
        """``(ids [h, w] int32, segments_info)`` of one image (all its valid detections, as
        evaluation), or None when the predictor is not panoptic."""
        from msvision.evaluation.panoptic_predictions import panoptic_segmentation

        if self.panoptic is None:
            return None
        if "masks" not in dets:
            raise ValueError("a panoptic config needs a segmentation head (model.seg_head)")
        v = np.asarray(dets["valid"], bool)
        return panoptic_segmentation(self.panoptic, dets["masks"][v], dets["mask_boxes"][v], dets["scores"][v],
                                     dets["labels"][v], tuple(dets["image_size"]), tuple(dets["orig_size"]),
                                     label_is_thing=self.classes.label_is_thing,
                                     label_to_category=self.classes.label_to_category)

    # ------------------------------------------------------------ files
    def predict_files(self, paths: Sequence[str], out_dir: str, batch_size: Optional[int] = None,
                      visualize: bool = True, *, num_threads: int = 4, progress: bool = True) -> dict:
        """Predicts every image file of ``paths`` (files or folders) into ``out_dir``.

        Writes ``out_dir/predictions.json``, ``out_dir/summary.json``, (with
        ``visualize``) one picture per image and (panoptic) one COCO panoptic PNG
        per image under ``out_dir/panoptic/``; see the module docstring. Returns
        the summary (``{"num_files", "num_images", "num_detections", "skipped",
        "compiled_shapes", "score_threshold", "seconds"}``, with masks also
        ``"mask_threshold"``); ``skipped`` lists the inputs that do not exist and
        the files that could not be read.
        """
        from tqdm.auto import tqdm

        if batch_size is not None and batch_size != self.batch_size:
            if getattr(self.detect, "batch_size", None) is not None:
                raise ValueError(f"this exported model runs batches of {self.detect.batch_size} only")
            self.batch_size = batch_size
        start = time.perf_counter()
        os.makedirs(out_dir, exist_ok=True)
        files, skipped = list_image_files(paths)
        for item in skipped:
            _report_skipped(item)
        sizes = {}
        for path in files:
            size = read_image_size(path)
            if size is None or min(size) < 1:
                reason = read_image(path)[1] if size is None else "an image without pixels"
                skipped.append(_report_skipped({"file_name": path, "error": reason or "not a readable image"}))
            else:
                sizes[path] = self.preprocessing.network_size(size)
        readable = [p for p in files if p in sizes]
        chunks = [[readable[i] for i in group] for group in self._batches([sizes[p] for p in readable])]
        entries: dict[str, dict] = {}
        picture_names: set[str] = {"predictions.json", "summary.json"}
        panoptic_names: set[str] = set()
        has_masks = False
        bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
        bar.update(len(files) - len(readable))
        with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
            # Decode and resize the next batch while the model runs on this one.
            pending = [pool.submit(_load, self.preprocessing, p) for p in chunks[0]] if chunks else []
            for c, chunk in enumerate(chunks):
                loaded = [f.result() for f in pending]
                if c + 1 < len(chunks):
                    pending = [pool.submit(_load, self.preprocessing, p) for p in chunks[c + 1]]
                good = [(p, image, record) for p, (image, record) in zip(chunk, loaded) if record is not None]
                for p, (image, record) in zip(chunk, loaded):
                    if record is None:  # image holds the reason
                        skipped.append(_report_skipped({"file_name": p, "error": image}, bar))
                if good:
                    for (path, image, record), dets in zip(good, self._run([g[2] for g in good])):
                        has_masks |= "masks" in dets
                        detections, masks = self._to_dicts(dets)
                        entry = {"file_name": path, "width": int(image.shape[1]), "height": int(image.shape[0]),
                                 "detections": detections}
                        panoptic = self._panoptic(dets)
                        if panoptic is not None:
                            entry["panoptic"] = _save_panoptic(*panoptic, path, out_dir, panoptic_names)
                        if visualize:
                            entry["picture"] = self._save_picture(image, dets, masks, panoptic, path, out_dir,
                                                                  picture_names)
                        entries[path] = entry
                bar.update(len(chunk))
        bar.close()
        predictions = [entries[p] for p in readable if p in entries]
        with open(os.path.join(out_dir, "predictions.json"), "w") as f:
            json.dump(predictions, f, indent=1)
            f.write("\n")
        seconds = time.perf_counter() - start
        summary = {
            "num_files": len(files),
            "num_images": len(predictions),
            "num_detections": sum(len(e["detections"]) for e in predictions),
            "skipped": skipped,
            "compiled_shapes": sorted(list(s) for s in self.shapes_seen),
            "score_threshold": self.score_threshold,
            "seconds": round(seconds, 3),
        }
        if has_masks:
            summary["mask_threshold"] = self.mask_threshold
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
        return summary

    def _save_picture(self, image: np.ndarray, dets: dict, masks: Optional[np.ndarray], panoptic, path: str,
                      out_dir: str, used: set[str]) -> str:
        """Draws the detections (their ``masks [N, h, w]`` blended) or, for a panoptic
        predictor, the panoptic segmentation; saves it as ``out_dir/<stem>.jpg``."""
        from msvision.evaluation.visualize import draw_detections, draw_panoptic

        if panoptic is not None:
            names = dict(zip(self.classes.label_to_category, self.classes.class_names))
            labels = {c: k for k, c in enumerate(self.classes.label_to_category)}
            picture = draw_panoptic(image, *panoptic, names, category_labels=labels)
        else:
            keep = kept_detections(dets["scores"], dets["valid"], self.score_threshold)
            picture = draw_detections(image, dets["boxes"][keep], dets["labels"][keep], dets["scores"][keep],
                                      self.classes.class_names, score_threshold=self.score_threshold, masks=masks)
        name = _unique_name(os.path.basename(path), ".jpg", used)
        picture.save(os.path.join(out_dir, name), quality=90)
        return name


def _unique_name(base: str, ext: str, used: set[str]) -> str:
    """``<stem of base><ext>``, or ``<stem>_<n><ext>`` when taken; added to ``used``."""
    stem = os.path.splitext(base)[0] or "image"
    name, n = f"{stem}{ext}", 1
    while name in used:
        name, n = f"{stem}_{n}{ext}", n + 1
    used.add(name)
    return name


def _save_panoptic(ids: np.ndarray, segments: list[dict], path: str, out_dir: str, used: set[str]) -> dict:
    """Writes ``ids [h, w]`` as a COCO panoptic PNG (id = R + 256·G + 256²·B) to
    ``out_dir/panoptic/<stem>.png``; returns ``{"file_name", "segments_info"}``."""
    from PIL import Image

    from msvision.evaluation.panoptic import id_to_rgb

    folder = os.path.join(out_dir, PANOPTIC_DIR)
    os.makedirs(folder, exist_ok=True)
    name = _unique_name(os.path.basename(path), ".png", used)
    Image.fromarray(id_to_rgb(ids)).save(os.path.join(folder, name))
    return {"file_name": name, "segments_info": segments}


def _load(preprocessing: Preprocessing, path: str) -> tuple[Any, Optional[dict]]:
    """``(image, record)``, or ``(why not, None)`` for a file that cannot be decoded."""
    image, reason = read_image(path)
    if image is None or min(image.shape[:2]) < 1:
        return reason or "an image without pixels", None
    return image, preprocessing.record(image)


def _report_skipped(item: dict, bar=None) -> dict:
    message = f"skipped {item['file_name']}: {item['error']}"
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)
    return item


# ------------------------------------------------------------------ CLI
def main(argv: Optional[Sequence[str]] = None) -> int:
    from msvision import cli

    return cli.run(_main, argv, prog="python -m msvision.predict")


def _main(argv: list[str]) -> int:
    from msvision import cli
    from msvision import config as config_lib

    overrides, rest = config_lib.split_config_args(argv)
    parser = argparse.ArgumentParser(prog="python -m msvision.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files and folders (walked for jpg/jpeg/png/bmp/webp)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", help="config file of the trained model")
    parser.add_argument("--workdir", help="work directory of the trained model")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--exported", help="a .jaxexport file (instead of --config/--workdir)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default 1; an export's own batch size)")
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD)
    parser.add_argument("--mask-threshold", type=float, default=DEFAULT_MASK_THRESHOLD,
                        help="mask probability above which a pixel is foreground (models with a segmentation head)")
    parser.add_argument("--no-pictures", action="store_true", help="write predictions.json only")
    parser.add_argument("--threads", type=int, default=4, help="image decoding threads")
    parser.add_argument("--log-level", default="WARNING")
    cli.add_verbose_flag(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from msvision.cache import enable_compilation_cache

    enable_compilation_cache()
    if args.exported:
        if args.config or args.workdir or overrides:
            parser.error("--exported replaces --config/--workdir")
        predictor = Predictor.from_exported(args.exported, batch_size=args.batch_size,
                                            score_threshold=args.score_threshold,
                                            mask_threshold=args.mask_threshold)
    else:
        if not (args.config and args.workdir):
            parser.error("give --config and --workdir (or --exported)")
        predictor = Predictor.from_workdir(args.config, args.workdir, args.step, overrides=overrides,
                                           batch_size=args.batch_size or 1,
                                           score_threshold=args.score_threshold,
                                           mask_threshold=args.mask_threshold)
    summary = predictor.predict_files(args.images, args.out, visualize=not args.no_pictures,
                                      num_threads=args.threads)
    print(f"{summary['num_images']} images, {summary['num_detections']} detections with score >= "
          f"{args.score_threshold} (checkpoint step {predictor.step}), {len(summary['skipped'])} skipped, "
          f"{len(summary['compiled_shapes'])} compiled input shapes, {summary['seconds']:.1f} s -> "
          f"{os.path.join(args.out, 'predictions.json')}")
    return 0 if summary["num_images"] or not summary["skipped"] else 1


if __name__ == "__main__":
    sys.exit(main())
