"""Counters of bad or unusual data met while reading a dataset.

Bad data never stops training: every problem is skipped or
clipped, logged as a ``logging`` warning naming the file, and counted here so the
trainer can log the counts as metrics (``stats.as_dict()``).

Annotation problems are counted once, when a source indexes its annotation file
(deterministic, independent of workers). Unreadable images and size mismatches are
only discovered when an image is decoded: ``corrupt_images`` counts distinct unreadable files (each
named once in the log and in :attr:`DataStats.bad_files`), ``corrupt_image_reads``
every failed read, in *this* process: with multiprocessing workers
(``data.num_workers > 0``) those reads happen in the workers, whose warnings still
reach the log but whose counts stay there.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Optional

import numpy as np

logger = logging.getLogger("msvision.data")

# At most this many warnings per kind and source, then one "further warnings
# suppressed" line: a dataset with 10k bad boxes must not flood the log.
MAX_WARNINGS_PER_KIND = 20


@dataclasses.dataclass
class DataStats:
    """Counts of skipped, clipped and replaced data.

    Attributes:
      images: images in the source.
      annotations: annotations read from the file (before any cleaning).
      images_without_annotations: images kept as pure background (no object).
      boxes_clipped: boxes partly outside the image, clipped to it.
      degenerate_boxes_dropped: boxes with width or height < 1 px after clipping
        (zero-size boxes and boxes entirely outside the image).
      unknown_category_dropped: annotations whose category id is not in the
        category list.
      overflow_dropped: annotations dropped because an image had more than
        ``max_instances`` (the largest boxes are kept).
      images_over_max_instances: images that had such an overflow.
      orphan_annotations: annotations whose ``image_id`` is not in ``images``
        (dropped; the ids are in :attr:`bad_files` under ``orphan_annotations``).
      corrupt_images: distinct image files that could not be read (missing,
        truncated or undecodable); each read of one is replaced by the next
        readable image.
      corrupt_image_reads: failed reads (a bad file is met again every epoch).
      crowd_segments_dropped: crowd segments left out of panoptic training (as the
        released code's ``CocoDataset``).
      size_mismatches: distinct images whose size on disk (EXIF orientation applied)
        disagrees with the annotation file's ``height``/``width``. One of the same
        aspect ratio (a resized copy) is used with its ground truth rescaled; any
        other (e.g. a photo annotated in its stored, unrotated frame) is replaced by
        the next readable image like an unreadable one.
    """

    images: int = 0
    annotations: int = 0
    images_without_annotations: int = 0
    boxes_clipped: int = 0
    degenerate_boxes_dropped: int = 0
    unknown_category_dropped: int = 0
    overflow_dropped: int = 0
    images_over_max_instances: int = 0
    orphan_annotations: int = 0
    corrupt_images: int = 0
    corrupt_image_reads: int = 0
    crowd_segments_dropped: int = 0
    size_mismatches: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._warned: dict[str, int] = {}
        self.bad_files: dict[str, list[str]] = {}  # kind -> names, in the order met

    def add_bad_file(self, kind: str, name: str, message: str) -> bool:
        """Records ``name`` under ``kind`` once: the first time it is met it is logged
        (``message % name``) and counted in the counter ``kind``; returns whether it
        was new."""
        with self._lock:
            names = self.bad_files.setdefault(kind, [])
            new = name not in names
            if new:
                names.append(name)
                setattr(self, kind, getattr(self, kind) + 1)
        if new:
            logger.warning(message, name)
        return new

    def add(self, name: str, count: int = 1) -> None:
        """Thread-safe ``self.<name> += count``."""
        with self._lock:
            setattr(self, name, getattr(self, name) + count)

    def warn(self, kind: str, message: str, *args) -> None:
        """Log a warning of ``kind``, rate-limited to ``MAX_WARNINGS_PER_KIND``."""
        with self._lock:
            seen = self._warned.get(kind, 0)
            self._warned[kind] = seen + 1
        if seen < MAX_WARNINGS_PER_KIND:
            logger.warning(message, *args)
        elif seen == MAX_WARNINGS_PER_KIND:
            logger.warning("further '%s' warnings suppressed (see DataStats)", kind)

    def check_size(self, path: str, annotated: tuple[int, int], actual: tuple[int, int], *,
                   rescalable: bool = True) -> Optional[np.ndarray]:
        """Compares an image's size on disk with its annotated ``(h, w)``.

        Returns None when they agree; else counts the image (once) in ``size_mismatches``
        and returns the ``[4]`` scale ``(sx, sy, sx, sy)`` for its boxes when the aspect
        ratios agree within 1 % (a resized copy) and ``rescalable``, or an empty array when
        the image must not be used.
        """
        if tuple(actual) == tuple(annotated):
            return None
        (ah, aw), (h, w) = annotated, actual
        usable = rescalable and ah > 0 and aw > 0 and abs(h / ah - w / aw) <= 0.01 * max(h / ah, w / aw)
        what = "ground truth rescaled to the file" if usable else \
            "not used: replaced by the next readable image"
        self.add_bad_file("size_mismatches", f"{path} ({ah}x{aw} annotated, {h}x{w} on disk)",
                          "image size disagrees with the annotations (h x w, EXIF orientation applied): %s; " + what)
        if not usable:
            return np.zeros((0,), np.float32)
        return np.array([w / aw, h / ah] * 2, np.float32)

    def as_dict(self, prefix: str = "data/") -> dict[str, int]:
        """The counters as ``{prefix + name: count}``, ready to log as metrics."""
        return {prefix + f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def bad_files_report(self) -> dict[str, list[str]]:
        """``{kind: [file names or ids]}`` of the bad data met so far (copy)."""
        with self._lock:
            return {k: list(v) for k, v in self.bad_files.items()}

    # The lock is not picklable; workers get a fresh one.
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
