"""What both variants of the synthetic dataset share: the "stuff" backgrounds and painting
an object over the older ones (:mod:`msvision.data.synthetic`, the "shapes" variant, and
:mod:`msvision.data.synthetic_large`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# (COCO id, name, RGB base colour, texture strength)
STUFF_CLASSES = [
    (11, "sky", (140, 195, 240), 10.0),
    (12, "grass", (70, 150, 60), 28.0),
    (13, "water", (40, 120, 150), 20.0),
    (14, "sand", (215, 195, 140), 18.0),
]
EMPTY_IMAGE_PROB = 0.06


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    grid = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((width, height), Image.BILINEAR))


def draw_background(rng: np.random.Generator, height: int, width: int):
    """Textured stuff regions: returns ``image [h, w, 3] float32`` and a list of
    ``(category_id, mask)``."""
    image = np.zeros((height, width, 3), np.float32)
    y = np.arange(height)[:, None]
    x = np.arange(width)[None, :]
    ground_index = int(rng.integers(1, len(STUFF_CLASSES)))
    if rng.random() < 0.2:  # ground only
        regions = [(STUFF_CLASSES[ground_index], np.ones((height, width), bool))]
    else:
        horizon = height * rng.uniform(0.3, 0.6) + height * 0.05 * np.sin(
            x * rng.uniform(0.01, 0.05) + rng.uniform(0, 2 * np.pi))
        sky = y < horizon
        regions = [(STUFF_CLASSES[0], sky), (STUFF_CLASSES[ground_index], ~sky)]
    noise = _smooth_noise(rng, height, width, 16) + 0.5 * rng.standard_normal(
        (height, width)).astype(np.float32)
    stuff = []
    for (category_id, name, colour, strength), mask in regions:
        texture = noise * strength
        if name == "water":
            texture = texture + 12 * np.sin(y * 0.4 + 3 * noise)
        image[mask] = (np.array(colour, np.float32) + texture[..., None])[mask]
        stuff.append((category_id, mask))
    return image, stuff


def paint_object(image: np.ndarray, things: list[dict], mask: np.ndarray, rng: np.random.Generator,
                 category_id: int, colour, centre: tuple[float, float], polygon, *, gradient: float,
                 min_area: int, max_occlusion: float) -> bool:
    """Paints the object ``mask`` over ``image`` and appends it to ``things`` (the older ones
    lose the pixels it covers), unless it shows fewer than ``min_area`` pixels or covers more
    than ``max_occlusion`` of an older object's visible pixels: then nothing changes and it
    returns False. Colour: ``colour`` with a random shade, a linear light ``gradient`` per
    pixel from ``centre`` and pixel noise."""
    if mask.sum() < min_area:
        return False
    if any((t["visible"] & mask).sum() > max_occlusion * t["visible"].sum() for t in things):
        return False
    for t in things:
        t["visible"] = t["visible"] & ~mask
    shade = (np.array(colour, np.float32) + rng.uniform(-20, 20, 3)).astype(np.float32)
    slope = rng.uniform(-gradient, gradient, 2)
    ys, xs = np.nonzero(mask)
    light = (xs - centre[0]) * slope[0] + (ys - centre[1]) * slope[1]
    image[ys, xs] = shade + light[:, None] + rng.normal(0, 4, (len(ys), 3))
    things.append({"category_id": category_id, "polygon": polygon, "mask": mask, "visible": mask.copy()})
    return True
