"""Listing the image files named on a command line (files and folders)."""

from __future__ import annotations

import os
from collections.abc import Sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_image_files(inputs: Sequence[str]) -> tuple[list[str], list[dict]]:
    """Expands ``inputs`` into image paths.

    A file is taken as it is (whatever its extension: whether it decodes is
    found out when it is read); a folder is walked recursively for files with an
    extension in :data:`IMAGE_EXTENSIONS` (any case), in sorted order. A path
    that is neither is reported.

    Returns:
      ``(paths, missing)``: paths in command-line order without duplicates, and
      ``[{"file_name": input, "error": ...}]`` for inputs that do not exist or
      folders without images.
    """
    paths: list[str] = []
    missing: list[dict] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)

    for item in inputs:
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files)
                          if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
            if not found:
                missing.append({"file_name": item, "error": "folder holds no image files"})
            for path in found:
                add(path)
        elif os.path.isfile(item):
            add(item)
        else:
            missing.append({"file_name": item, "error": "no such file or folder"})
    return paths, missing
