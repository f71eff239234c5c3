"""Prediction on image files: ``OUT/predictions.json``, ``OUT/summary.json``, pictures and
(panoptic) PNGs, in the formats the ``python -m msvision.predict`` help describes.

Files are decoded and resized by a thread pool while the model runs on the previous
batch; unreadable files are skipped with the reason (in the summary and on stderr).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from msvision.data.image_files import list_image_files
from msvision.data.images import read_image, read_image_size
from msvision.inference.outputs import kept_detections, unique_name
from msvision.inference.panoptic import PANOPTIC_DIR, save_panoptic_png
from msvision.inference.preprocessing import NetworkImage, Preprocessing


def predict_files(predictor, paths: Sequence[str], out_dir: str, batch_size: Optional[int] = None,
                  visualize: bool = True, *, num_threads: int = 4, progress: bool = True) -> dict:
    """Predicts every image file of ``paths`` (files or folders) with ``predictor`` (a
    :class:`~msvision.inference.predictor.Predictor`) into ``out_dir``.

    Writes ``out_dir/predictions.json``, ``out_dir/summary.json``, (with
    ``visualize``) one picture per image and (panoptic) one COCO panoptic PNG
    per image under ``out_dir/panoptic/``; see :mod:`msvision.predict`. Returns
    the summary (``{"num_files", "num_images", "num_detections", "skipped",
    "compiled_shapes", "score_threshold", "seconds"}``, with masks also
    ``"mask_threshold"``); ``skipped`` lists the inputs that do not exist and
    the files that could not be read. ``batch_size`` (when given) replaces the
    predictor's.
    """
    from tqdm.auto import tqdm

    if batch_size is not None and batch_size != predictor.batch_size:
        if predictor.static_batch_size is not None:
            raise ValueError(f"this exported model runs batches of {predictor.static_batch_size} only")
        predictor.batch_size = batch_size
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
            sizes[path] = predictor.preprocessing.network_size(size)
    readable = [p for p in files if p in sizes]
    chunks = [[readable[i] for i in group] for group in predictor.group_by_bucket([sizes[p] for p in readable])]
    entries: dict[str, dict] = {}
    picture_names: set[str] = {"predictions.json", "summary.json"}
    panoptic_names: set[str] = set()
    has_masks = False
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    bar.update(len(files) - len(readable))
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        # Decode and resize the next batch while the model runs on this one.
        pending = [pool.submit(_load, predictor.preprocessing, p) for p in chunks[0]] if chunks else []
        for c, chunk in enumerate(chunks):
            loaded = [f.result() for f in pending]
            if c + 1 < len(chunks):
                pending = [pool.submit(_load, predictor.preprocessing, p) for p in chunks[c + 1]]
            good = [(p, image, resized) for p, (image, resized) in zip(chunk, loaded) if resized is not None]
            for p, (image, resized) in zip(chunk, loaded):
                if resized is None:  # image holds the reason
                    skipped.append(_report_skipped({"file_name": p, "error": image}, bar))
            if good:
                for (path, image, _), dets in zip(good, predictor.detect_batch([g[2] for g in good])):
                    has_masks |= "masks" in dets
                    detections, masks = predictor.detection_dicts(dets)
                    entry = {"file_name": path, "width": int(image.shape[1]), "height": int(image.shape[0]),
                             "detections": detections}
                    panoptic = predictor.panoptic_of(dets)
                    if panoptic is not None:
                        name = unique_name(os.path.basename(path), ".png", panoptic_names)
                        entry["panoptic"] = save_panoptic_png(*panoptic, os.path.join(out_dir, PANOPTIC_DIR), name)
                    if visualize:
                        entry["picture"] = _save_picture(predictor, image, dets, masks, panoptic, path, out_dir,
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
        "compiled_shapes": sorted(list(s) for s in predictor.shapes_seen),
        "score_threshold": predictor.score_threshold,
        "seconds": round(seconds, 3),
    }
    if has_masks:
        summary["mask_threshold"] = predictor.mask_threshold
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    return summary


def _save_picture(predictor, image: np.ndarray, dets: dict, masks: Optional[np.ndarray], panoptic, path: str,
                  out_dir: str, used: set[str]) -> str:
    """Draws the detections (their ``masks [N, h, w]`` blended) or, for a panoptic
    predictor, the panoptic segmentation; saves it as ``out_dir/<stem>.jpg``."""
    from msvision.evaluation.visualize import draw_detections, draw_panoptic

    classes = predictor.classes
    if panoptic is not None:
        names = dict(zip(classes.label_to_category, classes.class_names))
        labels = {c: k for k, c in enumerate(classes.label_to_category)}
        picture = draw_panoptic(image, *panoptic, names, category_labels=labels)
    else:
        keep = kept_detections(dets["scores"], dets["valid"], predictor.score_threshold)
        picture = draw_detections(image, dets["boxes"][keep], dets["labels"][keep], dets["scores"][keep],
                                  classes.class_names, score_threshold=predictor.score_threshold, masks=masks)
    name = unique_name(os.path.basename(path), ".jpg", used)
    picture.save(os.path.join(out_dir, name), quality=90)
    return name


def _load(preprocessing: Preprocessing, path: str) -> tuple[Any, Optional[NetworkImage]]:
    """``(image, image resized for the network)``, or ``(why not, None)`` for a file that
    cannot be decoded."""
    image, reason = read_image(path)
    if image is None or min(image.shape[:2]) < 1:
        return reason or "an image without pixels", None
    return image, preprocessing.resize(image)


def _report_skipped(item: dict, bar=None) -> dict:
    message = f"skipped {item['file_name']}: {item['error']}"
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)
    return item
