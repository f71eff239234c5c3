"""Detections for image files or arrays from a trained model.

Command line::

    python -m msvision.predict --config=configs/X.py --workdir=DIR IMAGES_OR_FOLDERS... --out OUT \\
        [--batch-size N] [--score-threshold S] [--no-pictures] [--step N] [--config.a.b=v ...]
    python -m msvision.predict --exported model.jaxexport IMAGES_OR_FOLDERS... --out OUT

writes ``OUT/predictions.json``, a list with one entry per readable image, in
input order::

    {"file_name": "imgs/a.jpg", "width": 640, "height": 480, "picture": "a.jpg",
     "detections": [{"bbox": [x, y, w, h], "score": 0.93, "category_id": 18, "category": "dog"}, ...]}

(``bbox`` in pixels of the image file, COCO's ``(x, y, width, height)``;
``category_id`` is the dataset's id, ``category`` its name), one picture per
image with the detections drawn (``picture``; not with ``--no-pictures``), and
``OUT/summary.json`` with the files that were skipped because they could not be
read (``skipped``: ``[{"file_name", "error"}]``, also reported on stderr), the
number of compiled input shapes and the timing.

Python::

    from msvision.predict import Predictor
    predictor = Predictor.from_workdir("configs/quickstart.py", "runs/quickstart")
    detections = predictor(image)  # image: [H, W, 3] uint8 RGB, any size -> list of dicts as above

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
from msvision.data.images import decode_image, read_image_size
from msvision.data.transforms import resized_size
from msvision.train.data_setup import ClassList, read_class_list

log = logging.getLogger(__name__)

DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_MASK_THRESHOLD = 0.5  # evaluation's (msvision.evaluation.masks.detection_image_masks)
MASK_FORMATS = ("rle", "array", "none")
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


def detections_to_dicts(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, valid: np.ndarray,
                        classes: ClassList, score_threshold: float) -> list[dict]:
    """One image's detections as ``[{"bbox": [x, y, w, h], "score", "category_id", "category"}]``.

    Args:
      boxes: ``[K, 4]`` ``(x0, y0, x1, y1)`` in original pixels; scores ``[K]``;
        labels ``[K]`` contiguous; valid ``[K]`` bool.
    """
    out = []
    for k in np.flatnonzero(valid & (scores >= score_threshold)):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        label = int(labels[k])
        out.append({
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(scores[k]), 5),
            "category_id": classes.label_to_category[label],
            "category": classes.class_names[label],
        })
    return out


class Predictor:
    """Runs a detector on images of any size; see the module docstring.

    Args:
      detect: ``(images, image_sizes, orig_sizes) -> {"boxes", "scores", "labels", "valid"}``
        on numpy arrays (:func:`make_detect_function` with the weights bound,
        or a deserialised export).
      classes: the model's class list.
      preprocessing: resize and buckets.
      batch_size: images per call of ``detect``; a partial batch is padded, so
        each bucket compiles once. ``None``: any size (an export with a symbolic
        batch dimension).
      score_threshold: detections below it are left out of the outputs.
    """

    def __init__(self, detect: DetectFn, classes: ClassList, preprocessing: Preprocessing, *,
                 batch_size: int = 1, score_threshold: float = DEFAULT_SCORE_THRESHOLD):
        self.detect = detect
        self.classes = classes
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.score_threshold = score_threshold
        self.shapes_seen: set[tuple[int, ...]] = set()
        self.step: Optional[int] = None  # checkpoint step, when known

    # ------------------------------------------------------------ construction
    @classmethod
    def from_workdir(cls, config, workdir: str, step: Optional[int] = None, *, overrides: Sequence[str] = (),
                     batch_size: int = 1, score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> "Predictor":
        """The model of ``workdir``'s checkpoint (latest unless ``step``).

        Args:
          config: a config file path (``overrides`` applied) or a ``ConfigDict``.

        Raises:
          FileNotFoundError: no checkpoint, or no ``WORKDIR/dataset.json`` (the
            class list); the message names what is missing.
        """
        import jax

        from msvision import config as config_lib
        from msvision.train.loop import restore_for_inference

        if isinstance(config, (str, os.PathLike)):
            config = config_lib.load_config(os.fspath(config), overrides)
        classes = read_class_list(workdir)
        graphdef, params, rest, step = restore_for_inference(config, workdir, classes.num_classes, step)
        weights, treedef = jax.tree.flatten((params, rest))
        detect = jax.jit(make_detect_function(graphdef, treedef))

        def run(images, image_sizes, orig_sizes):
            return jax.device_get(detect(weights, images, image_sizes, orig_sizes))

        predictor = cls(run, classes, Preprocessing.from_config(config.data), batch_size=batch_size,
                        score_threshold=score_threshold)
        predictor.step = step
        return predictor

    @classmethod
    def from_exported(cls, path: str, *, batch_size: Optional[int] = None,
                      score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> "Predictor":
        """The model of a ``.jaxexport`` file (:mod:`msvision.export`); needs no config or checkpoint.

        ``batch_size`` must be the exported one for a static batch dimension;
        with a symbolic one it is free (``None``: 1).
        """
        from msvision.export import load_exported

        exported = load_exported(path)
        if exported.batch_size is not None:
            if batch_size not in (None, exported.batch_size):
                raise ValueError(f"{path} was exported for batches of {exported.batch_size}, not {batch_size}")
            batch_size = exported.batch_size
        predictor = cls(exported, exported.classes, exported.preprocessing, batch_size=batch_size or 1,
                        score_threshold=score_threshold)
        predictor.step = exported.step
        return predictor

    # ------------------------------------------------------------ arrays
    @property
    def num_compiled_shapes(self) -> int:
        """Distinct ``[B, H, W, 3]`` inputs given to ``detect`` so far (each compiled once)."""
        return len(self.shapes_seen)

    def __call__(self, image: np.ndarray) -> list[dict]:
        """Detections of one ``[H, W, 3] uint8`` RGB image (see :func:`detections_to_dicts`)."""
        return self.predict_arrays([image])[0]

    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[list[dict]]:
        """Detections of each image (``[H, W, 3] uint8`` RGB, any sizes)."""
        records = [self.preprocessing.record(as_rgb_uint8(im)) for im in images]
        outputs = [None] * len(records)
        for group in self._batches([r["image"].shape[:2] for r in records]):
            for i, dets in zip(group, self._run([records[i] for i in group])):
                outputs[i] = self._to_dicts(dets)
        return outputs

    def _batches(self, network_sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
        """Indices grouped by bucket (in first-seen order), in chunks of ``batch_size``."""
        groups: dict[Bucket, list[int]] = {}
        for i, size in enumerate(network_sizes):
            groups.setdefault(self.preprocessing.bucket([size]), []).append(i)
        return [idx[s:s + self.batch_size] for idx in groups.values() for s in range(0, len(idx), self.batch_size)]

    def _run(self, records: list[dict]) -> list[dict[str, np.ndarray]]:
        """Runs ``detect`` on one padded batch; returns each record's arrays."""
        from msvision.data.pipeline import padding_record

        bucket = self.preprocessing.bucket([r["image"].shape[:2] for r in records])
        padded = list(records) + [padding_record()] * (self.batch_size - len(records))
        batch = collate(padded, bucket, max_instances=1)
        self.shapes_seen.add(batch.images.shape)
        out = self.detect(batch.images, batch.image_sizes, batch.orig_sizes)
        out = {k: np.asarray(out[k]) for k in ("boxes", "scores", "labels", "valid")}
        return [{k: v[i] for k, v in out.items()} for i in range(len(records))]

    def _to_dicts(self, dets: dict[str, np.ndarray]) -> list[dict]:
        return detections_to_dicts(dets["boxes"], dets["scores"], dets["labels"], dets["valid"], self.classes,
                                   self.score_threshold)

    # ------------------------------------------------------------ files
    def predict_files(self, paths: Sequence[str], out_dir: str, batch_size: Optional[int] = None,
                      visualize: bool = True, *, num_threads: int = 4, progress: bool = True) -> dict:
        """Predicts every image file of ``paths`` (files or folders) into ``out_dir``.

        Writes ``out_dir/predictions.json``, ``out_dir/summary.json`` and (with
        ``visualize``) one picture per image; see the module docstring. Returns
        the summary (``{"num_files", "num_images", "num_detections", "skipped",
        "compiled_shapes", "score_threshold", "seconds"}``); ``skipped`` lists the
        inputs that do not exist and the files that could not be read.
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
                skipped.append(_report_skipped({"file_name": path, "error": "not a readable image"}))
            else:
                sizes[path] = self.preprocessing.network_size(size)
        readable = [p for p in files if p in sizes]
        chunks = [[readable[i] for i in group] for group in self._batches([sizes[p] for p in readable])]
        entries: dict[str, dict] = {}
        picture_names: set[str] = set()
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
                    if record is None:
                        skipped.append(_report_skipped({"file_name": p, "error": "cannot decode the image"},
                                                       bar))
                if good:
                    for (path, image, record), dets in zip(good, self._run([g[2] for g in good])):
                        entry = {"file_name": path, "width": int(image.shape[1]), "height": int(image.shape[0]),
                                 "detections": self._to_dicts(dets)}
                        if visualize:
                            entry["picture"] = self._save_picture(image, dets, path, out_dir, picture_names)
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
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
        return summary

    def _save_picture(self, image: np.ndarray, dets: dict, path: str, out_dir: str, used: set[str]) -> str:
        from msvision.evaluation.visualize import draw_detections

        valid = dets["valid"]
        picture = draw_detections(image, dets["boxes"][valid], dets["labels"][valid], dets["scores"][valid],
                                  self.classes.class_names, score_threshold=self.score_threshold)
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, n = f"{stem}.jpg", 1
        while name in used or name in ("predictions.json", "summary.json"):
            name, n = f"{stem}_{n}.jpg", n + 1
        used.add(name)
        picture.save(os.path.join(out_dir, name), quality=90)
        return name


def _load(preprocessing: Preprocessing, path: str) -> tuple[Optional[np.ndarray], Optional[dict]]:
    image = decode_image(path)
    if image is None or min(image.shape[:2]) < 1:
        return None, None
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
    from msvision import config as config_lib

    overrides, rest = config_lib.split_config_args(sys.argv[1:] if argv is None else list(argv))
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
    parser.add_argument("--no-pictures", action="store_true", help="write predictions.json only")
    parser.add_argument("--threads", type=int, default=4, help="image decoding threads")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(rest)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if args.exported:
        if args.config or args.workdir or overrides:
            parser.error("--exported replaces --config/--workdir")
        predictor = Predictor.from_exported(args.exported, batch_size=args.batch_size,
                                            score_threshold=args.score_threshold)
    else:
        if not (args.config and args.workdir):
            parser.error("give --config and --workdir (or --exported)")
        try:
            predictor = Predictor.from_workdir(args.config, args.workdir, args.step, overrides=overrides,
                                               batch_size=args.batch_size or 1,
                                               score_threshold=args.score_threshold)
        except config_lib.ConfigError as e:
            parser.error(str(e))
        except FileNotFoundError as e:  # no checkpoint, no dataset.json: nothing was built
            print(f"error: {e}", file=sys.stderr)
            return 2
    summary = predictor.predict_files(args.images, args.out, visualize=not args.no_pictures,
                                      num_threads=args.threads)
    print(f"{summary['num_images']} images, {summary['num_detections']} detections with score >= "
          f"{args.score_threshold} (checkpoint step {predictor.step}), {len(summary['skipped'])} skipped, "
          f"{len(summary['compiled_shapes'])} compiled input shapes, {summary['seconds']:.1f} s -> "
          f"{os.path.join(args.out, 'predictions.json')}")
    return 0 if summary["num_images"] or not summary["skipped"] else 1


if __name__ == "__main__":
    sys.exit(main())
