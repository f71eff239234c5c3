"""Drawing detections and ground truth on images (PIL).

Predictions are solid rectangles in their class colour with a ``name score``
tag; ground truth is dashed, in the same class colour, tagged ``GT name``.
Optional full-image masks are alpha-blended in the class colour below the boxes.

Small images are enlarged (to ``min_size`` pixels on the long side, by an integer
factor) and the font, line widths and dashes scale with the picture, so the tags
stay readable; tags are placed so that they do not cover each other.

Panoptic segmentations (:func:`draw_panoptic`) colour every segment (stuff in its class
colour, each thing in a shade of it), outline the segments and tag each with its
class name (and score) at the segment's most interior pixel.
"""

from __future__ import annotations

import colorsys
import math
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour per class (golden-ratio hue spacing)."""
    hue = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _class_name(class_names: Optional[Sequence[str]], label: int) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box, color, width: int, dash: int = 6) -> None:
    x0, y0, x1, y1 = box
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = math.hypot(bx - ax, by - ay)
        steps = max(1, int(length // dash))
        for s in range(0, steps, 2):
            t0, t1 = s / steps, min((s + 1) / steps, 1.0)
            draw.line(
                [(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)],
                fill=color,
                width=width,
            )


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_tag(size: tuple[int, int], anchor: tuple[float, float], tag_wh: tuple[int, int],
              placed: list) -> tuple[float, float, float, float]:
    """A free rectangle for a tag of ``tag_wh`` near ``anchor`` (a box's top-left corner).

    Tries above the corner, then inside below it, then further down in steps of the
    tag height, and keeps the first position that overlaps no rectangle of
    ``placed`` and lies in the image of ``size = (W, H)``; falls back to the first
    candidate. The chosen rectangle ``(x0, y0, x1, y1)`` is appended to ``placed``.
    """
    width, height = size
    tw, th = tag_wh
    x = min(max(0.0, anchor[0]), max(0.0, width - tw))
    candidates = [anchor[1] - th, anchor[1]] + [anchor[1] + k * th for k in range(1, 40)]
    candidates += [anchor[1] - k * th for k in range(2, 40)]
    first = None
    for y in candidates:
        y = min(max(0.0, y), max(0.0, height - th))
        rect = (x, y, x + tw, y + th)
        first = first or rect
        if not any(_overlaps(rect, other) for other in placed):
            placed.append(rect)
            return rect
    placed.append(first)
    return first


def _tag(draw: ImageDraw.ImageDraw, xy, text: str, color, font, placed: list) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 6)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x0, y0, x1, y1 = place_tag(draw.im.size, xy, (tw, th), placed)
    draw.rectangle([x0, y0, x1, y1], fill=color)
    draw.text((x0 + pad - left, y0 + pad - top), text, fill=(255, 255, 255), font=font)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Optional[Sequence[str]] = None,
    *,
    score_threshold: float = 0.3,
    gt_boxes: Optional[np.ndarray] = None,
    gt_labels: Optional[np.ndarray] = None,
    masks: Optional[np.ndarray] = None,
    line_width: Optional[int] = None,
    mask_alpha: float = 0.45,
    min_size: int = 640,
) -> Image.Image:
    """Draw detections (and optionally ground truth) on an image.

    Args:
      image: ``[H, W, 3]`` uint8 RGB.
      boxes: ``[K, 4]`` ``(x0, y0, x1, y1)`` in pixels of ``image``.
      labels: ``[K]`` int contiguous labels; scores: ``[K]`` float.
      class_names: optional names indexed by label.
      score_threshold: detections below are not drawn.
      gt_boxes, gt_labels: optional ``[G, 4]``, ``[G]`` ground truth (dashed).
      masks: optional ``[K, H, W]`` bool (or probabilities, thresholded at 0.5)
        full-image masks of the detections, blended with ``mask_alpha``.
      line_width: box outline width in pixels of the picture (default: scales
        with its size).
      min_size: images whose long side is shorter are enlarged by the smallest
        integer factor that reaches it (nearest neighbour, so pixels stay visible).

    Returns:
      ``PIL.Image`` RGB of size ``(s·W, s·H)``, ``s`` the enlargement factor (1 for
      images of ``min_size`` or more).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    scale = max(1, math.ceil(min_size / max(image.shape[:2]))) if max(image.shape[:2]) < min_size else 1
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        if masks is not None:
            masks = np.repeat(np.repeat(np.asarray(masks), scale, axis=-2), scale, axis=-1)
    long_side = max(image.shape[:2])
    line_width = line_width or max(2, round(long_side / 320))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * scale
    labels = np.asarray(labels).reshape(-1).astype(int)
    scores = np.asarray(scores, np.float64).reshape(-1)
    shown = np.flatnonzero(scores >= score_threshold)
    shown = shown[np.argsort(scores[shown], kind="stable")]  # best drawn last, on top

    canvas = image.astype(np.float32).copy()
    if masks is not None:
        masks = np.asarray(masks)
        for k in shown:
            m = masks[k] > 0.5 if masks.dtype != bool else masks[k]
            canvas[m] = (1 - mask_alpha) * canvas[m] + mask_alpha * np.asarray(class_color(labels[k]), np.float32)
    pil = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=max(12, round(long_side / 55)))
    placed: list = []

    for k in shown:  # ascending score: the best box is drawn last, on top
        draw.rectangle(boxes[k].tolist(), outline=class_color(labels[k]), width=line_width)
    if gt_boxes is not None:
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4) * scale
        gt_labels = np.zeros(len(gt_boxes), int) if gt_labels is None else np.asarray(gt_labels).astype(int)
        for box, label in zip(gt_boxes, gt_labels):
            _dashed_rectangle(draw, box.tolist(), class_color(label), line_width, dash=3 * line_width)
    for k in shown[::-1]:  # best first: its tag gets the preferred place
        _tag(draw, (boxes[k, 0], boxes[k, 1]), f"{_class_name(class_names, labels[k])} {scores[k]:.2f}",
             class_color(labels[k]), font, placed)
    if gt_boxes is not None:
        for box, label in zip(gt_boxes, gt_labels):
            _tag(draw, (box[0], box[3]), f"GT {_class_name(class_names, label)}", class_color(label), font, placed)
    return pil


def segment_color(label: int, index: int, is_thing: bool) -> tuple[int, int, int]:
    """The class colour for stuff; for things a per-segment shade of it (instances differ)."""
    r, g, b = class_color(label)
    if not is_thing:
        return r, g, b
    h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
    v = 0.55 + 0.45 * ((index * 0.381966) % 1.0)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_panoptic(
    image: np.ndarray,
    ids: np.ndarray,
    segments: Sequence[dict],
    category_names: dict,
    *,
    category_labels: Optional[dict] = None,
    alpha: float = 0.55,
    min_size: int = 640,
) -> Image.Image:
    """Draw a panoptic segmentation on an image.

    Args:
      image: ``[H, W, 3]`` uint8 RGB.
      ids: ``[H, W]`` int segment ids (0 = void, left as the image).
      segments: COCO panoptic ``segments_info`` (``id``, ``category_id``, optional
        ``isthing``, ``score``).
      category_names: ``{category_id: name}``.
      category_labels: ``{category_id: contiguous label}`` for the colours (default: the id).
      alpha: colour opacity; min_size: as :func:`draw_detections`.

    Returns:
      ``PIL.Image`` RGB, enlarged like :func:`draw_detections`.
    """
    from scipy import ndimage

    image = np.asarray(image)
    ids = np.asarray(ids)
    scale = max(1, math.ceil(min_size / max(image.shape[:2]))) if max(image.shape[:2]) < min_size else 1
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        ids = np.repeat(np.repeat(ids, scale, axis=0), scale, axis=1)
    canvas = image.astype(np.float32).copy()
    labels = category_labels or {}
    colors = {}
    for index, seg in enumerate(segments):
        label = labels.get(seg["category_id"], seg["category_id"])
        colors[seg["id"]] = segment_color(label, index, bool(seg.get("isthing", 1)))
        m = ids == seg["id"]
        canvas[m] = (1 - alpha) * canvas[m] + alpha * np.asarray(colors[seg["id"]], np.float32)
    edge = np.zeros(ids.shape, bool)  # segment borders in white
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    canvas[edge] = 255.0
    pil = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=max(12, round(max(ids.shape) / 55)))
    placed: list = []
    for seg in sorted(segments, key=lambda s: -s.get("score", 1.0)):
        m = ids == seg["id"]
        if not m.any():
            continue
        depth = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(np.argmax(depth), depth.shape)
        name = str(category_names.get(seg["category_id"], seg["category_id"]))
        text = f"{name} {seg['score']:.2f}" if "score" in seg else name
        color = tuple(int(0.7 * c) for c in colors[seg["id"]])
        _tag(draw, (float(x), float(y)), text, color, font, placed)
    return pil


def save_grid(images: Sequence[Image.Image], path: str, *, num_columns: int = 2, pad: int = 4) -> Image.Image:
    """Tile images (e.g. from :func:`draw_detections`) into one picture and save it."""
    if not images:
        raise ValueError("save_grid needs at least one image")
    cols = max(1, min(num_columns, len(images)))
    rows = -(-len(images) // cols)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * cell_w + (cols + 1) * pad, rows * cell_h + (rows + 1) * pad), (255, 255, 255))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im.convert("RGB"), (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    grid.save(path)
    return grid
