"""Panoptic outputs of a panoptic config (``data.source='coco_panoptic'``): evaluation's
post-processing of one image's detections (:mod:`msvision.evaluation.panoptic_postprocess`,
the config's ``eval.panoptic`` section) and the COCO panoptic PNG + ``segments_info``.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from msvision.data.classes import ClassList
from msvision.evaluation.panoptic_postprocess import PanopticPostProcess

PANOPTIC_DIR = "panoptic"  # OUT/panoptic/<stem>.png: the COCO panoptic PNGs of a panoptic config


def panoptic_settings(data_source: Optional[str], panoptic: Any) -> Optional[PanopticPostProcess]:
    """The panoptic post-processing of a config whose ``data.source`` is ``data_source``: the
    fields of its ``eval.panoptic`` section ``panoptic`` (a ``ConfigDict`` or dict; None: the
    defaults) when the source is ``'coco_panoptic'``, else None."""
    if data_source != "coco_panoptic":
        return None
    if panoptic is not None and hasattr(panoptic, "to_dict"):
        panoptic = panoptic.to_dict()
    return PanopticPostProcess(**(panoptic or {}))


def require_isthing(classes: ClassList, source: str) -> ClassList:
    """``classes``, which must have ``label_is_thing`` (the post-processing needs each class's
    ``isthing``; ``train.py`` writes it to ``dataset.json`` for a panoptic source, and an
    export's manifest carries it).

    Raises:
      msvision.cli.InputError: it has none; the message names ``source``, the file read.
    """
    if classes.label_is_thing is None:
        from msvision.cli import InputError

        raise InputError(f"{source}: a panoptic config needs each class's isthing, and this class list has no "
                         "\"label_is_thing\": [true, ..., false] (one per class)")
    return classes


def panoptic_segmentation(postprocess: PanopticPostProcess, classes: ClassList, dets: dict[str, np.ndarray]
                          ) -> tuple[np.ndarray, list[dict]]:
    """``(ids [h, w] int32, segments_info)`` of one image's detection arrays ``dets`` (all
    its valid detections, as evaluation; ``dets`` as :meth:`Predictor.detect_batch
    <msvision.inference.predictor.Predictor.detect_batch>` gives them), by evaluation's
    :func:`msvision.evaluation.panoptic_predictions.panoptic_segmentation`."""
    from msvision.evaluation.panoptic_predictions import panoptic_segmentation as segment

    if "masks" not in dets:
        raise ValueError("a panoptic config needs a segmentation head (model.seg_head)")
    v = np.asarray(dets["valid"], bool)
    return segment(postprocess, dets["masks"][v], dets["mask_boxes"][v], dets["scores"][v], dets["labels"][v],
                   tuple(dets["image_size"]), tuple(dets["orig_size"]), label_is_thing=classes.label_is_thing,
                   label_to_category=classes.label_to_category)


def save_panoptic_png(ids: np.ndarray, segments: list[dict], folder: str, name: str) -> dict:
    """Writes ``ids [h, w]`` as a COCO panoptic PNG (id = R + 256·G + 256²·B, 0 = void) to
    ``folder/name``; returns ``{"file_name": name, "segments_info": segments}``."""
    from PIL import Image

    from msvision.evaluation.panoptic import id_to_rgb

    os.makedirs(folder, exist_ok=True)
    Image.fromarray(id_to_rgb(ids)).save(os.path.join(folder, name))
    return {"file_name": name, "segments_info": segments}
