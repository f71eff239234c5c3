"""COCO folder → TFDS ArrayRecord → tfds.data_source → same records (no TensorFlow)."""

import numpy as np

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
        assert tfds_source.class_names == coco.class_names
        assert tfds_source.label_to_category == coco.label_to_category
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
