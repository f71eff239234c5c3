"""Images as people see them: EXIF orientation applied; every common format still decodes."""

import json

import numpy as np
import pytest
from PIL import Image

from msvision.data.coco import CocoSource
from msvision.data.images import decode_image, read_image, read_image_size

ORIENTATION = 0x0112


def _stored(height=48, width=64):
    """An image whose orientation is visible: a red top-left block, a blue bottom edge."""
    image = np.full((height, width, 3), 128, np.uint8)
    image[:16, :16] = (255, 0, 0)
    image[-8:, :] = (0, 0, 255)
    return image


def _save_with_orientation(path, array, orientation):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(array).save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation,displayed", [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),  # "rotate 90° clockwise to display": every phone held upright
    (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
    (5, lambda a: np.transpose(a, (1, 0, 2))),
])
def test_exif_orientation_is_applied(tmp_path, orientation, displayed):
    stored = _stored()
    path = tmp_path / "photo.jpg"
    _save_with_orientation(path, stored, orientation)
    want = displayed(stored)
    image = decode_image(str(path))
    assert image.shape == want.shape
    assert np.abs(image.astype(int) - want).mean() < 3  # JPEG rounding
    assert read_image_size(str(path)) == want.shape[:2]
    assert read_image_size(path.read_bytes()) == want.shape[:2]
    # The stored frame is still available (panoptic label maps are read as stored).
    assert decode_image(str(path), apply_orientation=False).shape == stored.shape


def _formats(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), np.uint8)
    out = {}
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    out["gray.png"] = (30, 40)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    out["palette.png"] = (30, 40)
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    out["rgba.png"] = (30, 40)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    out["cmyk.jpg"] = (30, 40)
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "sixteen.png")
    out["sixteen.png"] = (30, 40)
    Image.fromarray(rgb).save(tmp_path / "image.webp", lossless=True)
    out["image.webp"] = (30, 40)
    Image.fromarray(rgb[:2, :3]).save(tmp_path / "tiny.png")
    out["tiny.png"] = (2, 3)
    Image.new("RGB", (6000, 4000), (10, 20, 30)).save(tmp_path / "huge.jpg", quality=50)
    out["huge.jpg"] = (4000, 6000)
    return out


def test_formats_decode_as_before(tmp_path):
    for name, size in _formats(tmp_path).items():
        path = str(tmp_path / name)
        image = decode_image(path)
        assert image.dtype == np.uint8 and image.shape == size + (3,), name
        assert read_image_size(path) == size, name
        with Image.open(path) as reference:  # what decoding did before orientation was applied
            np.testing.assert_array_equal(image, np.asarray(reference.convert("RGB")), err_msg=name)


def test_unreadable_files_say_why(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    Image.fromarray(_stored()).save(tmp_path / "cut.jpg")
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert read_image(str(tmp_path / "missing.jpg")) == (None, "no such file")
    assert read_image(str(tmp_path / "text.jpg")) == (None, "not an image file Pillow can read")
    image, reason = read_image(str(tmp_path / "cut.jpg"))
    assert image is None and reason == "cannot decode it (Truncated File Read)"


def test_annotation_size_disagreeing_with_the_oriented_image_is_a_data_fault(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _save_with_orientation(images / "sideways.jpg", _stored(48, 64), 6)  # seen as 64 high, 48 wide
    _save_with_orientation(images / "upright.jpg", _stored(48, 64), 6)
    Image.fromarray(_stored(24, 32)).save(images / "half.jpg")  # a copy at half the annotated size
    records = [
        {"id": 1, "file_name": "sideways.jpg", "height": 48, "width": 64},  # the stored frame
        {"id": 2, "file_name": "upright.jpg", "height": 64, "width": 48},   # the frame people see
        {"id": 3, "file_name": "half.jpg", "height": 48, "width": 64},
    ]
    anns = [dict(id=k + 1, image_id=k + 1, bbox=[4, 4, 20, 10], category_id=1, iscrowd=0, area=200)
            for k in range(3)]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": records, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    source = CocoSource(path, images)

    record = source[0]  # the sideways photo annotated in its stored frame is not used
    assert record["image_id"] == 2 and record["orig_size"] == (64, 48) and record["image"].shape == (64, 48, 3)
    np.testing.assert_allclose(record["boxes"], [[4, 4, 24, 14]])
    half = source[2]  # a resized copy: used, its boxes rescaled, and counted all the same
    assert half["orig_size"] == (24, 32)
    np.testing.assert_allclose(half["boxes"], [[2, 2, 12, 7]])
    assert source.stats.size_mismatches == 2
    faults = source.stats.bad_files_report()["size_mismatches"]
    assert [f.rsplit("/", 1)[-1] for f in faults] == ["sideways.jpg (48x64 annotated, 64x48 on disk)",
                                                      "half.jpg (48x64 annotated, 24x32 on disk)"]
    assert source.stats.as_dict()["data/size_mismatches"] == 2
