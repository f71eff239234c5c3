"""The built-in "shapes" dataset: a deterministic COCO-format generator.

Each image shows coloured geometric objects (six "thing" classes: circle,
triangle, rectangle, star, hexagon, cross — each with its own colour, so shape
AND colour identify the class) on a textured background split into "stuff"
regions (sky above a wavy horizon; grass, water or sand below). Objects vary in
size (log-uniform, ~20–150 px across at ``image_size=256``), rotation and shade, may
overlap (a newer object covers at most 30% of an older one) and may be cut by
the image border; about 6% of the images have no object. Image sizes vary
around ``image_size`` with aspect ratios in [0.75, 1.33].

Layout written under ``root`` (per split ``train`` and ``val``)::

    <split>/images/000000.jpg …     RGB images
    <split>/instances.json          COCO detection: bbox, area, segmentation
    <split>/panoptic.json           COCO panoptic: segments_info per image
    <split>/panoptic/000000.png …   segment id = R + 256·G + 256²·B
    synthetic.json                  generation parameters (written last)

Instance masks are the *visible* part of each object, identical to its panoptic
segment: a polygon when the object is unoccluded (clipped to the image), a
compressed RLE when it is partly covered. ``bbox`` is the extent of the visible
mask, ``area`` its pixel count.

Deterministic: image ``i`` of a split is drawn from
``np.random.default_rng([seed, split, i])``; the same arguments give
byte-identical JSON. Command line::

    python -m msvision.data.synthetic --out data/shapes --num-train 600 \\
        --num-val 100 --image-size 256 --seed 0

Variants (``variant``, ``data.synthetic.variant``): ``'shapes'`` (this module's objects,
the quickstarts' data) and ``'large'`` (:mod:`msvision.data.synthetic_large`: objects
96–400 px across with 1–4 px outline detail on ~448 px images, for comparing mask heads
where a 112² mask has something to resolve). Both share the backgrounds, stuff classes
(:mod:`msvision.data.synthetic_scene`), layout and determinism.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from msvision.data.panoptic import segment_ids_to_rgb
from msvision.data.synthetic_scene import EMPTY_IMAGE_PROB, STUFF_CLASSES, draw_background, paint_object

FORMAT_VERSION = 1

# (COCO id, name, RGB colour): thing classes, colours far from the stuff colours.
THING_CLASSES = [
    (1, "circle", (215, 40, 40)),
    (2, "triangle", (240, 210, 30)),
    (3, "rectangle", (45, 70, 210)),
    (4, "star", (205, 50, 205)),
    (5, "hexagon", (250, 130, 20)),
    (6, "cross", (30, 30, 30)),
]
SPLITS = {"train": 0, "val": 1}
MAX_OCCLUSION = 0.3      # a new object may cover at most this fraction of an older one
MIN_VISIBLE_AREA = 120   # pixels; smaller (e.g. border-cut) objects are redrawn


# ------------------------------------------------------------------ shapes
def shape_polygon(name: str, cx: float, cy: float, radius: float, angle: float,
                  aspect: float) -> np.ndarray:
    """``[k, 2]`` vertices ``(x, y)`` of a shape centred at ``(cx, cy)``."""
    if name == "circle":
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        points = np.stack([np.cos(t), np.sin(t)], 1)
    elif name in ("triangle", "hexagon"):
        k = 3 if name == "triangle" else 6
        t = np.arange(k) * 2 * np.pi / k
        points = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == "rectangle":
        a = np.sqrt(aspect)
        points = np.array([[-a, -1 / a], [a, -1 / a], [a, 1 / a], [-a, 1 / a]]) / np.sqrt(2) * 1.2
    elif name == "star":
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        points = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif name == "cross":
        u, v = 1.0, 0.33
        points = np.array([[-v, -u], [v, -u], [v, -v], [u, -v], [u, v], [v, v],
                           [v, u], [-v, u], [-v, v], [-u, v], [-u, -v], [-v, -v]])
    else:
        raise ValueError(name)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rotation.T * radius + np.array([cx, cy])


def rasterize_polygon(polygon: list[float], height: int, width: int) -> np.ndarray:
    """COCO polygon ``[x0, y0, x1, y1, …]`` → ``[h, w] bool`` with pycocotools (the
    same rasterization COCO evaluation uses)."""
    rle = mask_utils.frPyObjects([polygon], height, width)
    return mask_utils.decode(rle)[..., 0].astype(bool)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` of the pixel extent of a non-empty mask."""
    rows, cols = np.any(mask, 1), np.any(mask, 0)
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


# ------------------------------------------------------------------ images
def draw_image(rng: np.random.Generator, image_size: int):
    """One image: ``uint8 [h, w, 3]``, ``things`` = list of dicts
    (category_id, polygon, full mask, visible mask), ``stuff`` as above."""
    aspect = float(rng.uniform(0.75, 1.33))  # width / height
    width = int(round(image_size * np.sqrt(aspect)))
    height = int(round(image_size / np.sqrt(aspect)))
    image, stuff = draw_background(rng, height, width)
    things: list[dict[str, Any]] = []
    num_objects = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(1, 9))
    attempts = 0
    while len(things) < num_objects and attempts < 4 * num_objects + 10:
        attempts += 1
        label = int(rng.integers(len(THING_CLASSES)))
        category_id, name, colour = THING_CLASSES[label]
        radius = float(np.exp(rng.uniform(np.log(10), np.log(0.3 * min(height, width)))))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        polygon = shape_polygon(name, cx, cy, radius, rng.uniform(0, 2 * np.pi),
                                rng.uniform(0.5, 2.0))
        polygon[:, 0] = np.clip(polygon[:, 0], 0, width)
        polygon[:, 1] = np.clip(polygon[:, 1], 0, height)
        flat = [round(float(v), 2) for v in polygon.reshape(-1)]
        mask = rasterize_polygon(flat, height, width)
        paint_object(image, things, mask, rng, category_id, colour, (cx, cy), flat, gradient=0.6,
                     min_area=MIN_VISIBLE_AREA, max_occlusion=MAX_OCCLUSION)
    return np.clip(image, 0, 255).round().astype(np.uint8), things, stuff


def _encode_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


VARIANTS = ("shapes", "large")


def _variant(variant: str):
    """``(draw_image, thing_classes)`` of a variant."""
    if variant == "shapes":
        return draw_image, THING_CLASSES
    if variant == "large":
        from msvision.data import synthetic_large

        return synthetic_large.draw_image, synthetic_large.THING_CLASSES
    raise ValueError(f"unknown synthetic variant {variant!r} ({' | '.join(VARIANTS)})")


def generate_split(out: Path, split: str, num_images: int, image_size: int, seed: int,
                   variant: str = "shapes") -> None:
    """Write one split (images, PNGs, instances.json, panoptic.json) under ``out/split``."""
    draw, thing_classes = _variant(variant)
    split_dir = out / split
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "panoptic").mkdir(parents=True, exist_ok=True)
    id_offset = 1 + 1_000_000 * SPLITS[split]
    images, annotations, panoptic_annotations = [], [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, SPLITS[split], index])
        image, things, stuff = draw(rng, image_size)
        height, width = image.shape[:2]
        image_id = id_offset + index
        stem = f"{index:06d}"
        Image.fromarray(image).save(split_dir / "images" / f"{stem}.jpg", quality=92)
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": height,
                       "width": width})

        segment_map = np.zeros((height, width), np.int32)
        segments = []
        for thing in things:
            visible = thing["visible"]
            unoccluded = thing["polygon"] is not None and bool(np.array_equal(visible, thing["mask"]))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": thing["category_id"], "iscrowd": 0,
                "bbox": mask_bbox(visible), "area": int(visible.sum()),
                "segmentation": [thing["polygon"]] if unoccluded else _encode_rle(visible),
            })
            segments.append((thing["category_id"], visible))
        covered = np.zeros((height, width), bool)
        for _, visible in segments:
            covered |= visible
        segments += [(c, m & ~covered) for c, m in stuff if (m & ~covered).any()]
        segments_info = []
        for k, (category_id, mask) in enumerate(segments):
            segment_id = k + 1
            segment_map[mask] = segment_id
            segments_info.append({"id": segment_id, "category_id": category_id, "iscrowd": 0,
                                  "bbox": mask_bbox(mask), "area": int(mask.sum())})
        Image.fromarray(segment_ids_to_rgb(segment_map)).save(
            split_dir / "panoptic" / f"{stem}.png")
        panoptic_annotations.append({"image_id": image_id, "file_name": f"{stem}.png",
                                     "segments_info": segments_info})

    things_json = [{"id": i, "name": n, "supercategory": "shape", "isthing": 1,
                    "color": list(c)} for i, n, c in thing_classes]
    stuff_json = [{"id": i, "name": n, "supercategory": "background", "isthing": 0,
                   "color": list(c)} for i, n, c, _ in STUFF_CLASSES]
    info = {"description": f"msvision synthetic {variant}", "version": str(FORMAT_VERSION)}
    _write_json(split_dir / "instances.json", {
        "info": info, "images": images, "annotations": annotations,
        "categories": [{k: v for k, v in c.items() if k != "isthing"} for c in things_json]})
    _write_json(split_dir / "panoptic.json", {
        "info": info, "images": images, "annotations": panoptic_annotations,
        "categories": things_json + stuff_json})


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))


def generate_synthetic_dataset(out, *, num_train: int = 600, num_val: int = 100,
                               image_size: int = 256, seed: int = 0, variant: str = "shapes") -> Path:
    """Write both splits under ``out`` (which may exist) and ``synthetic.json`` last."""
    out = Path(out)
    generate_split(out, "train", num_train, image_size, seed, variant)
    generate_split(out, "val", num_val, image_size, seed, variant)
    _write_json(out / "synthetic.json", _parameters(num_train, num_val, image_size, seed, variant))
    return out


def _parameters(num_train, num_val, image_size, seed, variant="shapes") -> dict[str, Any]:
    parameters = {"format_version": FORMAT_VERSION, "num_train": num_train, "num_val": num_val,
                  "image_size": image_size, "seed": seed}
    if variant != "shapes":  # datasets generated before variants existed stay valid
        parameters["variant"] = variant
    return parameters


def ensure_synthetic_dataset(root, *, num_train: int = 600, num_val: int = 100,
                             image_size: int = 256, seed: int = 0, variant: str = "shapes") -> Path:
    """Generate the dataset at ``root`` unless it is already there; returns ``root``.

    Idempotent and crash-safe: the dataset is generated in a temporary sibling
    folder and renamed into place in one step, so ``root`` is either absent or
    complete (several processes may race; the first rename wins). Raises
    ``ValueError`` if ``root`` holds a dataset generated with other parameters
    or something that is not a synthetic dataset.
    """
    root = Path(root)
    _variant(variant)  # fail on an unknown variant before writing anything
    wanted = _parameters(num_train, num_val, image_size, seed, variant)
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            generate_synthetic_dataset(tmp, num_train=num_train, num_val=num_val,
                                       image_size=image_size, seed=seed, variant=variant)
            os.rename(tmp, root)
        except OSError:
            if not (root / "synthetic.json").exists():  # not a lost race: a real error
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    marker = root / "synthetic.json"
    if not marker.exists():
        raise ValueError(f"{root} exists but is not a synthetic dataset (no synthetic.json)")
    found = json.loads(marker.read_text())
    if found != wanted:
        raise ValueError(f"{root} was generated with {found}, not {wanted}; "
                         "remove it or choose another folder")
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Generate the synthetic shapes dataset.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="shapes", choices=VARIANTS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = ensure_synthetic_dataset(args.out, num_train=args.num_train, num_val=args.num_val,
                                    image_size=args.image_size, seed=args.seed, variant=args.variant)
    print(f"{root}: ready in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
