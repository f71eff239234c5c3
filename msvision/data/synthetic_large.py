"""The "large" variant of the built-in synthetic dataset: objects big enough for 112² masks.

``python -m msvision.data.synthetic --variant large`` (``data.synthetic.variant='large'``).
The same backgrounds, stuff classes, file layout and determinism as the default
"shapes" variant (:mod:`msvision.data.synthetic`), with objects whose outlines only a
fine mask can follow:

- objects 96–400 px across (the diameter of the circle around the shape, log-uniform,
  capped by the image; elongated shapes have smaller boxes) on images of about
  ``image_size`` = 448 px (edges 388–517 with the aspect ratios in [0.75, 1.33]),
  1–4 per image; a newer object may cover up to 40 % of an older one;
- outline detail at 1–4 px, in absolute pixels, whatever the object's size:

  ========== ============================================================================
  class      detail
  ========== ============================================================================
  gear       teeth 2–4 px deep and 3–8 px wide (serrated edge), a central hole, 3–6 bolt holes
  wheel      a rim 4–9 px wide, 5–12 spokes 1.5–4 px wide, a hub (holes between spokes)
  starfish   5–7 curved arms tapering to thin tips, a 1–2.5 px ripple along the edge
  leaf       lobed outline with 1.5–3 px teeth, a stem 2–3 px wide
  spider     a body and head with 8 legs 1.5–3.5 px wide, each bent at a knee
  comb       a spine with teeth 2–4 px wide and gaps of 2–4 px
  ========== ============================================================================

Masks are rasterised at the image's resolution (PIL, no anti-aliasing) and stored as
compressed RLE (holes are not expressible as one COCO polygon). The COCO "large" size
range (area > 96²) is populated in both splits, so AP_L is defined; thin objects
(wheels, spiders) often have the area of a "medium" one despite their extent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from msvision.data.synthetic_scene import EMPTY_IMAGE_PROB, draw_background, paint_object

# (COCO id, name, RGB colour): the default variant's colours, new outlines.
THING_CLASSES = [
    (1, "gear", (215, 40, 40)),
    (2, "wheel", (240, 210, 30)),
    (3, "starfish", (205, 50, 205)),
    (4, "leaf", (250, 130, 20)),
    (5, "spider", (30, 30, 30)),
    (6, "comb", (45, 70, 210)),
]
MAX_OCCLUSION = 0.4          # a new object may cover at most this fraction of an older one
MIN_VISIBLE_AREA = 600       # pixels; objects mostly outside the image are redrawn
MIN_EXTENT, MAX_EXTENT = 96.0, 400.0
MAX_OBJECTS = 4


SUPERSAMPLING = 4  # masks are drawn at 4× and a pixel is foreground when at least half covered


class _Canvas:
    """A binary mask drawn with primitives in object coordinates: a unit of ``radius``
    pixels, rotated by ``angle``, centred at ``(cx, cy)``; widths are in pixels.

    Drawn at ``SUPERSAMPLING``× the resolution and thresholded at half coverage, so a
    2 px spoke or gap is 2 px wide (PIL fills a polygon's outline pixels too, which at
    1× widens every part by about a pixel and closes 2 px gaps)."""

    def __init__(self, height: int, width: int, cx: float, cy: float, radius: float, angle: float):
        self.size = (height, width)
        self.image = Image.new("L", (width * SUPERSAMPLING, height * SUPERSAMPLING), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.centre = np.array([cx, cy])
        self.radius = radius
        self.rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def to_pixels(self, points: np.ndarray) -> list[tuple[float, float]]:
        """Object coordinates → drawing coordinates (PIL's pixel j is centred at j)."""
        xy = np.asarray(points, np.float64) @ self.rotation.T * self.radius + self.centre
        return [tuple(p) for p in xy * SUPERSAMPLING - 0.5]

    def polygon(self, points: np.ndarray, fill: int = 1) -> None:
        self.draw.polygon(self.to_pixels(points), fill=fill)

    def line(self, points: np.ndarray, width_px: float, fill: int = 1) -> None:
        """A polyline ``width_px`` wide as quads around each segment."""
        xy = np.asarray(self.to_pixels(points))
        for a, b in zip(xy[:-1], xy[1:]):
            d = b - a
            n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-6) * width_px * SUPERSAMPLING / 2
            self.draw.polygon([tuple(a + n), tuple(b + n), tuple(b - n), tuple(a - n)], fill=fill)

    def disc(self, x: float, y: float, r: float, fill: int = 1, n: int = 48) -> None:
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        self.polygon(np.stack([x + r * np.cos(t), y + r * np.sin(t)], 1), fill)

    def mask(self) -> np.ndarray:
        h, w = self.size
        coverage = np.asarray(self.image, np.float32).reshape(h, SUPERSAMPLING, w, SUPERSAMPLING).mean((1, 3))
        return coverage >= 0.5


def _radial(profile: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.stack([profile * np.cos(t), profile * np.sin(t)], 1)


def _gear(c: _Canvas, rng: np.random.Generator) -> None:
    px = 1.0 / c.radius  # one pixel in object units
    depth = rng.uniform(2, 4) * px
    teeth = int(np.clip(round(np.pi * c.radius / rng.uniform(3, 8)), 12, 120))
    t = np.linspace(0, 2 * np.pi, teeth * 8, endpoint=False)
    square = (np.floor(t / (2 * np.pi) * teeth * 2) % 2)  # teeth as a square wave
    c.polygon(_radial(1.0 - depth * square, t))
    c.disc(0, 0, rng.uniform(0.18, 0.32), 0)
    holes = int(rng.integers(3, 7))
    ring, size = rng.uniform(0.55, 0.7), rng.uniform(0.07, 0.12)
    for k in range(holes):
        a = 2 * np.pi * k / holes
        c.disc(ring * np.cos(a), ring * np.sin(a), size, 0, n=24)


def _wheel(c: _Canvas, rng: np.random.Generator) -> None:
    px = 1.0 / c.radius
    rim = max(rng.uniform(4, 9) * px, 0.04)
    c.disc(0, 0, 1.0, 1, n=96)
    c.disc(0, 0, 1.0 - rim, 0, n=96)
    hub = rng.uniform(0.1, 0.2)
    c.disc(0, 0, hub, 1)
    spokes = int(rng.integers(5, 13))
    width = rng.uniform(1.5, 4)
    offset = rng.uniform(0, 2 * np.pi)
    for k in range(spokes):
        a = offset + 2 * np.pi * k / spokes
        c.line(np.array([[0.0, 0.0], [np.cos(a), np.sin(a)]]) * (1.0 - rim / 2), width)


def _starfish(c: _Canvas, rng: np.random.Generator) -> None:
    px = 1.0 / c.radius
    arms = int(rng.integers(5, 8))
    sharpness = rng.uniform(2.0, 4.0)
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    profile = 0.3 + 0.7 * np.abs(np.cos(arms * t / 2)) ** sharpness
    ripple = rng.uniform(1, 2.5) * px * np.sin(t * np.round(2 * np.pi * c.radius / rng.uniform(5, 9)))
    c.polygon(_radial(profile + ripple, t))


def _leaf(c: _Canvas, rng: np.random.Generator) -> None:
    px = 1.0 / c.radius
    lobes = int(rng.choice([3, 5]))
    t = np.linspace(0, 2 * np.pi, 900, endpoint=False)
    profile = 0.55 + 0.35 * np.abs(np.cos(lobes * (t - np.pi / 2) / 2)) ** 0.7
    profile = profile * (0.75 + 0.25 * np.sin(t))  # a narrower base at -y
    profile = profile / profile.max()
    teeth = np.round(2 * np.pi * c.radius / rng.uniform(4, 8))
    profile = profile + rng.uniform(1.5, 3) * px * (np.abs(np.sin(t * teeth / 2)) - 1.0)
    c.polygon(_radial(profile, t))
    c.line(np.array([[0.0, -0.3], [rng.uniform(-0.15, 0.15), -1.0]]), rng.uniform(2, 3))


def _spider(c: _Canvas, rng: np.random.Generator) -> None:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    body = rng.uniform(0.22, 0.32)
    c.polygon(np.stack([body * 0.75 * np.cos(t), 0.12 + body * np.sin(t)], 1))
    c.disc(0, -0.22, rng.uniform(0.1, 0.15))
    width = rng.uniform(1.5, 3.5)
    for side in (-1, 1):
        for k in range(4):
            a = np.deg2rad(-50 + 30 * k + rng.uniform(-6, 6))
            knee = np.array([side * 0.6 * np.cos(a), 0.6 * np.sin(a) - 0.25])
            foot = np.array([side * (0.7 + 0.2 * k / 3) * np.cos(a) * 1.25, np.sin(a) * 0.9 + 0.25])
            foot = foot / np.hypot(*foot)  # on the circumscribed circle
            c.line(np.array([[side * 0.1, 0.05 * k], knee, foot]), width)


def _comb(c: _Canvas, rng: np.random.Generator) -> None:
    px = 1.0 / c.radius
    spine = rng.uniform(0.15, 0.25)
    height = spine + rng.uniform(0.5, 0.95)  # inside the unit circle: 0.8² + (1.2/2)² = 1
    top, bottom = -height / 2, -height / 2 + spine
    c.polygon(np.array([[-0.8, top], [0.8, top], [0.8, bottom], [-0.8, bottom]]))
    tooth, gap = rng.uniform(2, 4) * px, rng.uniform(2, 4) * px
    x = -0.8 + gap
    while x + tooth <= 0.8:
        c.polygon(np.array([[x, bottom], [x + tooth, bottom], [x + tooth, height / 2], [x, height / 2]]))
        x += tooth + gap


DRAWERS = {"gear": _gear, "wheel": _wheel, "starfish": _starfish, "leaf": _leaf,
           "spider": _spider, "comb": _comb}


def object_mask(name: str, rng: np.random.Generator, height: int, width: int, cx: float, cy: float,
                radius: float, angle: float) -> np.ndarray:
    """``[h, w] bool`` mask of one object of class ``name`` (extent about ``2·radius``)."""
    canvas = _Canvas(height, width, cx, cy, radius, angle)
    DRAWERS[name](canvas, rng)
    return canvas.mask()


def draw_image(rng: np.random.Generator, image_size: int):
    """One image of the large variant: ``uint8 [h, w, 3]``, ``things`` = list of dicts
    (category_id, polygon None, full mask, visible mask), ``stuff`` = list of
    ``(category_id, mask)``."""
    aspect = float(rng.uniform(0.75, 1.33))  # width / height
    width = int(round(image_size * np.sqrt(aspect)))
    height = int(round(image_size / np.sqrt(aspect)))
    image, stuff = draw_background(rng, height, width)
    things: list[dict[str, Any]] = []
    num_objects = 0 if rng.random() < EMPTY_IMAGE_PROB / 2 else int(rng.integers(1, MAX_OBJECTS + 1))
    largest = min(MAX_EXTENT, 0.95 * max(height, width))
    attempts = 0
    while len(things) < num_objects and attempts < 4 * num_objects + 10:
        attempts += 1
        label = int(rng.integers(len(THING_CLASSES)))
        category_id, name, colour = THING_CLASSES[label]
        radius = float(np.exp(rng.uniform(np.log(MIN_EXTENT), np.log(largest)))) / 2
        cx = rng.uniform(0.1, 0.9) * width
        cy = rng.uniform(0.1, 0.9) * height
        mask = object_mask(name, rng, height, width, cx, cy, radius, rng.uniform(0, 2 * np.pi))
        paint_object(image, things, mask, rng, category_id, colour, (cx, cy), None, gradient=0.25,
                     min_area=MIN_VISIBLE_AREA, max_occlusion=MAX_OCCLUSION)
    return np.clip(image, 0, 255).round().astype(np.uint8), things, stuff
