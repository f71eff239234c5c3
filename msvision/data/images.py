"""Image decoding that reports failures instead of raising.

Images are read as people see them: the EXIF orientation (phone photos are stored
sideways with an orientation tag) is applied, and sizes are reported in that
orientation, as detectron2's and torchvision's readers do. Panoptic label PNGs are
read as stored (``apply_orientation=False``): they are maps in the annotation's frame.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
from PIL import ExifTags, Image, ImageOps

# EXIF orientations that swap width and height (90° and 270° rotations, transposes).
_SWAPS_SIDES = (5, 6, 7, 8)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _source(data_or_path):
    return io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)
    except (*_DECODE_ERRORS, KeyError, TypeError):
        return 1  # unreadable EXIF: the pixels as stored


def _reason(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image file Pillow can read"
    return f"cannot decode it ({error})"


def read_image(data_or_path, *, apply_orientation: bool = True) -> tuple[Optional[np.ndarray], str]:
    """Decodes an image file (path or bytes) to ``[h, w, 3] uint8`` RGB, or says why not.

    Grayscale, palette, CMYK, 16-bit and alpha images are converted to RGB (as
    Pillow's ``convert("RGB")``); with ``apply_orientation`` the EXIF orientation is
    applied. Returns ``(image, "")`` or ``(None, reason)`` when the file is missing,
    truncated or not an image.
    """
    try:
        with Image.open(_source(data_or_path)) as image:
            image.load()  # forces full decoding: a truncated file fails here
            if apply_orientation and _orientation(image) != 1:
                image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"), dtype=np.uint8), ""
    except _DECODE_ERRORS as e:
        return None, _reason(e)


def decode_image(data_or_path, *, apply_orientation: bool = True) -> Optional[np.ndarray]:
    """:func:`read_image` without the reason: ``[h, w, 3] uint8`` RGB or None."""
    return read_image(data_or_path, apply_orientation=apply_orientation)[0]


def exif_orientation(data_or_path) -> int:
    """The EXIF orientation tag (1 = as stored, 1–8), 1 when absent or unreadable."""
    try:
        with Image.open(_source(data_or_path)) as image:
            return _orientation(image)
    except _DECODE_ERRORS:
        return 1


def read_image_size(data_or_path, *, apply_orientation: bool = True) -> Optional[tuple[int, int]]:
    """``(h, w)`` read from the file header only (in the EXIF orientation), or ``None`` if unreadable."""
    try:
        with Image.open(_source(data_or_path)) as image:
            h, w = image.height, image.width
            if apply_orientation and _orientation(image) in _SWAPS_SIDES:
                h, w = w, h
            return h, w
    except _DECODE_ERRORS:
        return None
