"""Drawing detections and ground truth on images (PIL).

Predictions are solid rectangles in their class colour with a ``name score``
tag; ground truth is dashed, in the same class colour, tagged ``GT name``.
Optional full-image masks are alpha-blended in the class colour below the boxes.
Line width and label font scale with the image (:func:`default_line_width`,
:func:`default_font_size`), so labels stay readable on a 4000-pixel photo and
do not cover a 100-pixel thumbnail.
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


def default_line_width(height: int, width: int) -> int:
    """Box outline width in pixels: 2 up to 800-pixel images, then 1/400 of the longer edge."""
    return max(2, round(max(height, width) / 400))


def default_font_size(height: int, width: int) -> int:
    """Label font size in pixels: 1/45 of the longer edge (14 px at 640), at least 11."""
    return max(11, round(max(height, width) / 45))


def _load_font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable (needs Pillow >= 10.1 with FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # fixed-size bitmap font


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


def _tag(draw: ImageDraw.ImageDraw, xy, text: str, color, font, below: bool = False) -> None:
    """A filled label whose bottom-left corner is at ``xy`` (top-left with ``below``)."""
    x, y = xy
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    y = y if below else max(0, y - th - 2)
    draw.rectangle([x, y, x + tw + 2, y + th + 2], fill=color)
    draw.text((x + 1 - left, y + 1 - top), text, fill=(255, 255, 255), font=font)


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
    font_size: Optional[int] = None,
    mask_alpha: float = 0.45,
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
      line_width, font_size: box outline width and label font size in pixels;
        ``None`` scales them with the image (:func:`default_line_width`,
        :func:`default_font_size`).

    Returns:
      ``PIL.Image`` RGB of size ``(W, H)``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
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
    height, width = image.shape[:2]
    line_width = default_line_width(height, width) if line_width is None else line_width
    font = _load_font(default_font_size(height, width) if font_size is None else font_size)

    if gt_boxes is not None:
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        gt_labels = np.zeros(len(gt_boxes), int) if gt_labels is None else np.asarray(gt_labels).astype(int)
        for box, label in zip(gt_boxes, gt_labels):
            color = class_color(label)
            _dashed_rectangle(draw, box.tolist(), color, line_width)
            _tag(draw, (box[0], box[3]), f"GT {_class_name(class_names, label)}", color, font, below=True)

    for k in shown:
        color = class_color(labels[k])
        x0, y0, x1, y1 = boxes[k].tolist()
        draw.rectangle([x0, y0, x1, y1], outline=color, width=line_width)
        _tag(draw, (x0, y0), f"{_class_name(class_names, labels[k])} {scores[k]:.2f}", color, font)
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
