"""The class list (msvision/data/classes.py) and the WORKDIR/dataset.json files runs wrote."""

import json
import shutil
from pathlib import Path

import pytest

from msvision.data.classes import DATASET_FILE, ClassList, read_class_list, read_dataset_file, write_dataset_file

ROOT = Path(__file__).resolve().parents[2]
SAVED = [
    ROOT / "benchmarks" / "weights" / "large_detector" / "dataset.json",  # a detector's
    Path(__file__).parent / "dataset_files" / "panoptic_effseg.json",  # a panoptic run's, with label_is_thing
]


@pytest.mark.parametrize("path", SAVED, ids=lambda p: p.parent.name)
def test_saved_dataset_files_read_and_write_back_unchanged(path, tmp_path):
    (tmp_path / "run").mkdir()
    shutil.copy(path, tmp_path / "run" / DATASET_FILE)
    classes, num_train_images = read_dataset_file(str(tmp_path / "run"))
    saved = json.loads(path.read_text())
    assert classes.class_names == tuple(saved["class_names"]) and num_train_images == saved["num_train_images"]
    assert classes.label_to_category == tuple(saved["label_to_category"])
    assert classes.label_is_thing == (tuple(saved["label_is_thing"]) if "label_is_thing" in saved else None)
    assert read_class_list(str(tmp_path / "run")) == classes
    (tmp_path / "again").mkdir()
    write_dataset_file(str(tmp_path / "again"), classes, num_train_images)
    assert json.loads((tmp_path / "again" / DATASET_FILE).read_text()) == saved


def test_a_dataset_file_without_the_image_count_reads(tmp_path):
    (tmp_path / DATASET_FILE).write_text(json.dumps({"class_names": ["a"], "label_to_category": [3]}))
    assert read_dataset_file(str(tmp_path)) == (ClassList(("a",), (3,)), 0)


def test_classes_of_coco_categories():
    categories = [{"id": 12, "name": "grass", "isthing": 0}, {"id": 3}, {"id": 7, "name": "car", "isthing": 1}]
    assert ClassList.from_categories(categories) == ClassList(("3", "car", "grass"), (3, 7, 12))
    panoptic = ClassList.from_categories(categories, with_isthing=True)
    assert panoptic.label_is_thing == (True, True, False) and panoptic.num_classes == 3
    with pytest.raises(ValueError, match="2 class names but 1 isthing flags"):
        ClassList(("a", "b"), (1, 2), (True,))
