"""A detector run on images of any size, from a work directory or a ``.jaxexport`` file.

Python::

    from msvision.inference import Predictor
    predictor = Predictor.from_workdir("configs/quickstart.py", "runs/quickstart")
    detections = predictor(image)  # image: [H, W, 3] uint8 RGB, any size -> list of dicts
    detections = predictor(image, masks="array")  # masks as [H, W] bool arrays ("mask"), not RLEs
    ids, segments_info = predictor.panoptic_segmentation(image)  # panoptic configs
    predictor.predict_files(["photos/"], "preds/")  # what ``python -m msvision.predict`` does

Images are resized and padded into buckets (:mod:`msvision.inference.preprocessing`), so
the number of compiled shapes is bounded by the number of buckets; every layer is
padding-aware, so an image's detections do not depend on its bucket or on the other
images of its batch. Restoring needs the work directory's checkpoint and
``dataset.json`` (the class list, written by ``train.py``), not the training data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from msvision.data.batching import Bucket
from msvision.data.classes import DATASET_FILE, ClassList, read_class_list
from msvision.inference.detect import DetectFn, make_detect_function
from msvision.inference.outputs import (DEFAULT_MASK_THRESHOLD, DEFAULT_SCORE_THRESHOLD, MASK_FORMATS,
                                        detections_to_dicts, kept_detections, paste_detection_masks)
from msvision.inference.panoptic import panoptic_segmentation, panoptic_settings, require_isthing
from msvision.inference.preprocessing import NetworkImage, Preprocessing, as_rgb_uint8


class Predictor:
    """Runs a detector on images of any size; see the module docstring.

    Args:
      detect: ``(images, image_sizes, orig_sizes) -> {"boxes", "scores", "labels", "valid"}``
        (+ ``"masks"``, ``"mask_boxes"`` with a segmentation head) on numpy arrays
        (:func:`~msvision.inference.detect.make_detect_function` with the weights bound,
        or a deserialised export).
      classes: the model's class list (with ``label_is_thing`` for ``panoptic``).
      preprocessing: resize and buckets.
      batch_size: images per call of ``detect``; a partial batch is padded, so
        each bucket compiles once. ``None``: any size (an export with a symbolic
        batch dimension).
      static_batch_size: the one batch size ``detect`` runs (an export with a static
        batch dimension; ``batch_size`` must equal it); None: any.
      score_threshold: detections below it are left out of the outputs.
      mask_threshold: a pasted mask probability above it is foreground (0.5 as evaluation).
      panoptic: the panoptic post-processing (``eval.panoptic`` of a panoptic config,
        :func:`~msvision.inference.panoptic.panoptic_settings`); None for instance outputs only.
    """

    def __init__(self, detect: DetectFn, classes: ClassList, preprocessing: Preprocessing, *,
                 batch_size: int = 1, static_batch_size: Optional[int] = None,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, mask_threshold: float = DEFAULT_MASK_THRESHOLD,
                 panoptic: Optional[Any] = None):
        if panoptic is not None and classes.label_is_thing is None:
            raise ValueError("panoptic prediction needs classes.label_is_thing (each class's isthing)")
        if static_batch_size is not None and batch_size != static_batch_size:
            raise ValueError(f"this exported model runs batches of {static_batch_size} only, not {batch_size}")
        self.detect = detect
        self.classes = classes
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.static_batch_size = static_batch_size
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.panoptic = panoptic
        self.shapes_seen: set[tuple[int, ...]] = set()  # [B, H, W, 3] inputs given to detect (one compile each)
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
          config: a config file path (``overrides`` applied) or a ``ConfigDict`` (resolved
            here, not changed).

        Raises:
          FileNotFoundError: no checkpoint, or no ``WORKDIR/dataset.json`` (the
            class list); the message names what is missing.
          msvision.cli.InputError: a panoptic config whose ``dataset.json`` has no
            ``label_is_thing``.
        """
        import jax

        from msvision import config_sections
        from msvision.inference.restore import restore_for_inference

        if isinstance(config, (str, os.PathLike)):
            config = config_sections.load_config(os.fspath(config), overrides)
        else:
            config = config_sections.resolve_config(config)
        classes = read_class_list(workdir)
        panoptic = panoptic_settings(config.data.source, config.eval.panoptic)
        if panoptic is not None:
            require_isthing(classes, os.path.join(workdir, DATASET_FILE))
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
        """The model of a ``.jaxexport`` file (:mod:`msvision.inference.artefact`); needs no
        config or checkpoint.

        ``batch_size`` must be the exported one for a static batch dimension;
        with a symbolic one it is free (``None``: 1). The panoptic settings come
        from the config stored in the manifest.
        """
        from msvision.inference.artefact import load_exported

        exported = load_exported(path)
        if exported.batch_size is not None:
            if batch_size not in (None, exported.batch_size):
                raise ValueError(f"{path} was exported for batches of {exported.batch_size}, not {batch_size}")
            batch_size = exported.batch_size
        record = exported.manifest.get("config") or {}  # the resolved config saved in the manifest (JSON)
        panoptic = panoptic_settings(record.get("data", {}).get("source"), record.get("eval", {}).get("panoptic"))
        if panoptic is not None:
            require_isthing(exported.classes, path)
        predictor = cls(exported, exported.classes, exported.preprocessing, batch_size=batch_size or 1,
                        static_batch_size=exported.batch_size, score_threshold=score_threshold,
                        mask_threshold=mask_threshold, panoptic=panoptic)
        predictor.step = exported.step
        return predictor

    # ------------------------------------------------------------ arrays
    def __call__(self, image: np.ndarray, masks: str = "rle") -> list[dict]:
        """Detections of one ``[H, W, 3] uint8`` RGB image (see
        :func:`~msvision.inference.outputs.detections_to_dicts`).

        With a segmentation head each detection also has its mask at the image's
        size: ``masks="rle"`` a COCO RLE ``"segmentation"``, ``masks="array"`` a
        ``[H, W] bool`` array ``"mask"`` (both with ``"area"``), ``masks="none"`` neither.
        """
        return self.predict_arrays([image], masks=masks)[0]

    def predict_arrays(self, images: Sequence[np.ndarray], masks: str = "rle") -> list[list[dict]]:
        """Detections of each image (``[H, W, 3] uint8`` RGB, any sizes); ``masks`` as in :meth:`__call__`."""
        return self._predict_arrays(images, lambda dets: self.detection_dicts(dets, masks)[0])

    def panoptic_segmentation(self, image: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """The panoptic segmentation of one ``[H, W, 3] uint8`` RGB image (a panoptic config):
        ``ids [H, W] int32`` (0 = void) and its COCO ``segments_info`` (``id``,
        ``category_id`` (the dataset's), ``iscrowd``, ``isthing``, ``score``, ``area``,
        ``bbox`` ``[x, y, w, h]``), from :mod:`msvision.evaluation.panoptic_postprocess`."""
        if self.panoptic is None:
            raise ValueError("not a panoptic predictor (the config's data.source is not 'coco_panoptic')")
        return self._predict_arrays([image], self.panoptic_of)[0]

    def _predict_arrays(self, images: Sequence[np.ndarray], convert: Callable[[dict], Any]) -> list:
        """``convert`` of each image's arrays (:meth:`detect_batch`), images batched by bucket."""
        resized = [self.preprocessing.resize(as_rgb_uint8(im)) for im in images]
        outputs = [None] * len(resized)
        for group in self.group_by_bucket([r.image.shape[:2] for r in resized]):
            for i, dets in zip(group, self.detect_batch([resized[i] for i in group])):
                outputs[i] = convert(dets)
        return outputs

    def group_by_bucket(self, network_sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
        """Indices grouped by bucket (in first-seen order), in chunks of ``batch_size``."""
        groups: dict[Bucket, list[int]] = {}
        for i, size in enumerate(network_sizes):
            groups.setdefault(self.preprocessing.bucket([size]), []).append(i)
        return [idx[s:s + self.batch_size] for idx in groups.values() for s in range(0, len(idx), self.batch_size)]

    def detect_batch(self, images: Sequence[NetworkImage]) -> list[dict[str, np.ndarray]]:
        """Runs ``detect`` on ``images`` (at most ``batch_size``, padded into one batch of it);
        returns each image's arrays: ``detect``'s outputs and ``image_size``, ``orig_size``
        ``[2]`` (h, w) at the network input and originally."""
        batch = self.preprocessing.batch(images, self.batch_size)
        self.shapes_seen.add(batch.images.shape)
        out = self.detect(batch.images, batch.image_sizes, batch.orig_sizes)
        keys = ("boxes", "scores", "labels", "valid") + (("masks", "mask_boxes") if "masks" in out else ())
        out = {k: np.asarray(out[k]) for k in keys}
        out["image_size"], out["orig_size"] = np.asarray(batch.image_sizes), np.asarray(batch.orig_sizes)
        return [{k: v[i] for k, v in out.items()} for i in range(len(images))]

    def detection_dicts(self, dets: dict[str, np.ndarray], mask_format: str = "rle"
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

    def panoptic_of(self, dets: dict[str, np.ndarray]) -> Optional[tuple[np.ndarray, list[dict]]]:
        """``(ids [h, w] int32, segments_info)`` of one image's arrays (all its valid
        detections, as evaluation), or None when the predictor is not panoptic."""
        if self.panoptic is None:
            return None
        return panoptic_segmentation(self.panoptic, self.classes, dets)

    # ------------------------------------------------------------ files
    def predict_files(self, paths: Sequence[str], out_dir: str, batch_size: Optional[int] = None,
                      visualize: bool = True, *, num_threads: int = 4, progress: bool = True) -> dict:
        """Predicts every image file of ``paths`` (files or folders) into ``out_dir``;
        see :func:`msvision.inference.files.predict_files`. Returns the summary."""
        from msvision.inference.files import predict_files

        return predict_files(self, paths, out_dir, batch_size, visualize, num_threads=num_threads,
                             progress=progress)
