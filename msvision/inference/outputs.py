"""One image's detection arrays as JSON-ready dicts: boxes, scores, the dataset's
categories, and masks as COCO RLEs (the format of evaluation's ``results_<step>.json``)
or arrays.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from msvision.data.classes import ClassList

DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_MASK_THRESHOLD = 0.5  # evaluation's (msvision.evaluation.masks.detection_image_masks)
MASK_FORMATS = ("rle", "array", "none")


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


def unique_name(base: str, ext: str, used: set[str]) -> str:
    """``<stem of base><ext>``, or ``<stem>_<n><ext>`` when taken; added to ``used``."""
    stem = os.path.splitext(base)[0] or "image"
    name, n = f"{stem}{ext}", 1
    while name in used:
        name, n = f"{stem}_{n}{ext}", n + 1
    used.add(name)
    return name
