"""The class list: one record of a dataset's classes, and its file ``WORKDIR/dataset.json``.

:class:`ClassList` is what everything that needs classes reads: the data sources build
it from their categories (``source.classes``), training saves the training source's,
and evaluation, prediction and export (and an export's manifest) read it back.

``train.py`` writes ``WORKDIR/dataset.json`` (:func:`write_dataset_file`)::

    {"class_names": ["person", ...], "label_to_category": [1, ...], "num_train_images": 118287}

plus ``"label_is_thing": [true, ..., false]`` for a panoptic training source.
Evaluation, prediction and export read it (:func:`read_class_list`), so they need no
training annotations.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any, Optional

DATASET_FILE = "dataset.json"


@dataclasses.dataclass(frozen=True)
class ClassList:
    """The classes of a dataset or a trained model: ``class_names[k]`` and
    ``label_to_category[k]`` (the dataset's category id) of contiguous label ``k``; for a
    panoptic dataset also ``label_is_thing[k]`` (the category's ``isthing``; None otherwise)."""

    class_names: tuple[str, ...]
    label_to_category: tuple[int, ...]
    label_is_thing: Optional[tuple[bool, ...]] = None

    def __post_init__(self):
        if len(self.class_names) != len(self.label_to_category):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.label_to_category)} category ids")
        if self.label_is_thing is not None and len(self.label_is_thing) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.label_is_thing)} isthing flags")

    @classmethod
    def from_categories(cls, categories: Sequence[dict[str, Any]], *, with_isthing: bool = False) -> "ClassList":
        """The classes of COCO ``categories`` records (``id``, ``name``, panoptic ``isthing``),
        labelled in order of category id; a missing name is the id, a missing ``isthing`` a
        thing. ``with_isthing``: keep ``label_is_thing`` (a panoptic dataset)."""
        categories = sorted(categories, key=lambda c: c["id"])
        is_thing = tuple(bool(c.get("isthing", 1)) for c in categories) if with_isthing else None
        return cls(tuple(c.get("name", str(c["id"])) for c in categories), tuple(int(c["id"]) for c in categories),
                   is_thing)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        out = {"class_names": list(self.class_names), "label_to_category": list(self.label_to_category)}
        if self.label_is_thing is not None:
            out["label_is_thing"] = [bool(t) for t in self.label_is_thing]
        return out

    @classmethod
    def from_json(cls, data: dict) -> "ClassList":
        is_thing = data.get("label_is_thing")
        return cls(tuple(str(n) for n in data["class_names"]), tuple(int(c) for c in data["label_to_category"]),
                   None if is_thing is None else tuple(bool(t) for t in is_thing))


def write_dataset_file(workdir: str, classes: ClassList, num_train_images: int) -> None:
    """Writes ``WORKDIR/dataset.json``: ``classes`` and the number of training images."""
    with open(os.path.join(workdir, DATASET_FILE), "w") as f:
        json.dump(dict(**classes.to_json(), num_train_images=num_train_images), f, indent=2)


def read_dataset_file(workdir: str) -> tuple[ClassList, int]:
    """``(classes, num_train_images)`` of ``WORKDIR/dataset.json`` (0 images when the file has
    no count).

    Raises:
      FileNotFoundError: it does not exist (the message names it and what writes it).
      msvision.cli.InputError: it is unreadable or not valid JSON.
    """
    path = os.path.join(workdir, DATASET_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: train.py writes the class list of a run there. Point --workdir at a "
            "training run's work directory (one written before dataset.json existed needs it added: "
            '{"class_names": [...], "label_to_category": [...]}).')
    from msvision.cli import read_json

    saved = read_json(path, "the run's class list")
    return ClassList.from_json(saved), int(saved.get("num_train_images", 0))


def read_class_list(workdir: str) -> ClassList:
    """The class list of the model trained in ``workdir`` (its ``dataset.json``).

    Raises:
      FileNotFoundError: ``WORKDIR/dataset.json`` does not exist (the message names it);
        the training annotations are never read instead.
    """
    return read_dataset_file(workdir)[0]
