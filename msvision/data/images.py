"""Image decoding that reports failures instead of raising."""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
from PIL import Image


def decode_image(data_or_path) -> Optional[np.ndarray]:
    """Decode an image file (path or bytes) to ``[h, w, 3] uint8`` RGB.

    Grayscale, palette, CMYK and alpha images are converted to RGB. Returns
    ``None`` when the file is missing, truncated or not an image.
    """
    try:
        source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
        with Image.open(source) as image:
            image.load()  # forces full decoding: a truncated file fails here
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def read_image_size(data_or_path) -> Optional[tuple[int, int]]:
    """``(h, w)`` read from the file header only, or ``None`` if unreadable."""
    try:
        source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
        with Image.open(source) as image:
            return image.height, image.width
    except (OSError, ValueError, SyntaxError):
        return None
