"""The class list of a trained model, kept in its work directory.

``train.py`` writes ``WORKDIR/classes.json`` at the start of a run::

    {"class_names": ["person", ...], "category_ids": [1, ...]}

entry ``k`` of both lists describes the model's contiguous label ``k`` (the
dataset's categories sorted by id, see :mod:`msvision.data.coco`). Prediction
and export read it, so restoring a model does not need the training
annotations; a work directory from before this file existed falls back to the
config's training dataset when that is still on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os

CLASSES_FILE = "classes.json"


@dataclasses.dataclass(frozen=True)
class ClassList:
    """``class_names[k]`` and ``category_ids[k]`` of contiguous label ``k``."""

    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]

    def __post_init__(self):
        if len(self.class_names) != len(self.category_ids):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.category_ids)} category ids")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        return {"class_names": list(self.class_names), "category_ids": list(self.category_ids)}


def write_classes(workdir: str, class_names, category_ids) -> str:
    """Writes ``WORKDIR/classes.json``; returns its path."""
    classes = ClassList(tuple(str(n) for n in class_names), tuple(int(c) for c in category_ids))
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CLASSES_FILE)
    with open(path, "w") as f:
        json.dump(classes.to_json(), f, indent=1)
        f.write("\n")
    return path


def read_classes(workdir: str, config=None) -> ClassList:
    """The class list of the model in ``workdir``.

    Reads ``WORKDIR/classes.json``; without it, the class list of
    ``config.data``'s training split (which must then exist).

    Raises:
      FileNotFoundError: neither is available.
    """
    path = os.path.join(workdir, CLASSES_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            data = json.load(f)
        return ClassList(tuple(data["class_names"]), tuple(int(c) for c in data["category_ids"]))
    if config is None:
        raise FileNotFoundError(f"{path} not found and no config to read the class list from")
    from msvision.train import data_setup

    try:
        info = data_setup.dataset_info(config.data)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(
            f"{path} not found, and the class list of the config's training data could not be read ({e}). "
            f"Write it with msvision.train.classes.write_classes(workdir, class_names, category_ids)."
        ) from e
    return ClassList(tuple(info.class_names), tuple(info.label_to_category))
