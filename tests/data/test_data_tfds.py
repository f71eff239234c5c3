"""COCO folder → TFDS ArrayRecord → tfds.data_source → same records (no TensorFlow)."""

import numpy as np
import pytest

from msvision.data.classes import ClassList
from msvision.data.coco import CocoSource
from msvision.data.tfds_source import TfdsSource, convert_coco_to_tfds


def test_round_trip(shapes_root, tmp_path):
    splits = {split: CocoSource(shapes_root / folder / "instances.json",
                                shapes_root / folder / "images")
              for split, folder in (("train", "train"), ("validation", "val"))}
    folder = convert_coco_to_tfds(splits, "msvision_shapes_test", str(tmp_path))
    assert any(".array_record" in p.name
               for p in (tmp_path / "msvision_shapes_test" / "1.0.0").iterdir()), folder
    for split, coco in splits.items():
        tfds_source = TfdsSource("msvision_shapes_test", split, str(tmp_path))
        assert len(tfds_source) == len(coco)
        assert tfds_source.classes == coco.classes
        for i in range(len(coco)):
            a, b = coco[i], tfds_source[i]
            assert a["image_id"] == b["image_id"] and a["file_name"] == b["file_name"]
            np.testing.assert_array_equal(a["image"], b["image"])  # JPEG bytes copied
            assert b["orig_size"] == a["orig_size"] == tfds_source.image_size(i)
            np.testing.assert_allclose(b["boxes"], a["boxes"], rtol=1e-4, atol=1e-3)
            np.testing.assert_array_equal(a["labels"], b["labels"])
            np.testing.assert_array_equal(a["is_crowd"], b["is_crowd"])
            assert b["boxes"].dtype == np.float32 and b["labels"].dtype == np.int32


def test_pipeline_reads_tfds(shapes_root, tmp_path, small_data_cfg):
    from msvision.data import pipeline
    source = CocoSource(shapes_root / "val" / "instances.json", shapes_root / "val" / "images")
    convert_coco_to_tfds({"validation": source}, "msvision_shapes_eval", str(tmp_path))
    coco_batches = list(pipeline.build_eval_iterator(small_data_cfg))
    small_data_cfg.source = "tfds"
    small_data_cfg.val.update(tfds_name="msvision_shapes_eval", tfds_split="validation",
                              tfds_data_dir=str(tmp_path))
    tfds_batches = list(pipeline.build_eval_iterator(small_data_cfg))
    assert len(coco_batches) == len(tfds_batches)
    for a, b in zip(coco_batches, tfds_batches):
        np.testing.assert_array_equal(a.image_ids, b.image_ids)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(a.labels, b.labels)


# ------------------------------------------------ EXIF orientation (TFDS's decoder ignores it)
_STORED_H, _STORED_W = 40, 64
_BLOCK = (10, 5, 40, 15)  # x1, y1, x2, y2 in the stored image, pixel edges


def _stored_jpeg(orientation: int) -> bytes:
    """A JPEG stored sideways or mirrored as a camera writes it: a red block on grey,
    with the EXIF orientation tag."""
    import io

    from PIL import Image
    array = np.full((_STORED_H, _STORED_W, 3), 128, np.uint8)
    x1, y1, x2, y2 = _BLOCK
    array[y1:y2, x1:x2] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def _red_block(image: np.ndarray) -> np.ndarray:
    """``(x1, y1, x2, y2)`` pixel edges of the red pixels: where the block is as seen."""
    red = (image[..., 0] > 180) & (image[..., 1] < 90) & (image[..., 2] < 90)
    ys, xs = np.nonzero(red)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_normalized_boxes_turn_as_pillow_turns_the_pixels(orientation):
    from msvision.data.images import decode_image
    from msvision.data.tfds_source import orient_normalized_boxes
    data = _stored_jpeg(orientation)
    seen = decode_image(data)  # Pillow's exif_transpose: the oracle
    x1, y1, x2, y2 = _BLOCK
    stored = np.array([[y1 / _STORED_H, x1 / _STORED_W, y2 / _STORED_H, x2 / _STORED_W]])
    ymin, xmin, ymax, xmax = orient_normalized_boxes(stored, orientation)[0]
    h, w = seen.shape[:2]
    np.testing.assert_allclose([xmin * w, ymin * h, xmax * w, ymax * h], _red_block(seen), atol=1.01)


def test_tfds_images_are_read_as_seen_with_their_boxes(tmp_path, monkeypatch):
    """A TFDS dataset as TFDS's own builders write it (the camera's JPEG bytes, boxes
    normalized in the stored frame): read in the EXIF orientation, boxes turned along."""
    from types import SimpleNamespace

    from msvision.data import tfds_source as module
    orientations = (1, 6, 3, 8)
    x1, y1, x2, y2 = _BLOCK
    stored_box = [y1 / _STORED_H, x1 / _STORED_W, y2 / _STORED_H, x2 / _STORED_W]

    def examples(source):
        del source
        for i, orientation in enumerate(orientations):
            yield str(i), {"image": _stored_jpeg(orientation), "image/id": i,
                           "image/filename": f"photo_{orientation}.jpg",
                           "objects": {"bbox": np.array([stored_box], np.float32),
                                       "label": np.array([0]), "is_crowd": np.array([False])}}

    monkeypatch.setattr(module, "_examples", examples)
    split = SimpleNamespace(classes=ClassList(("block",), (1,)))
    module.convert_coco_to_tfds({"train": split}, "msvision_exif_test", str(tmp_path))
    source = TfdsSource("msvision_exif_test", "train", str(tmp_path))
    for i, orientation in enumerate(orientations):
        record = source[i]
        sideways = orientation in (5, 6, 7, 8)
        expected_size = (_STORED_W, _STORED_H) if sideways else (_STORED_H, _STORED_W)
        assert record["image"].shape[:2] == record["orig_size"] == source.image_size(i) == expected_size
        np.testing.assert_allclose(record["boxes"][0], _red_block(record["image"]), atol=1.01)
