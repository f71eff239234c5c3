"""Images of any size into the padded batches the network runs on.

An image is resized as in evaluation (shortest edge ``eval_scale``, longest at most
``eval_max_size``; :func:`msvision.data.transforms.resized_size`) and zero-padded at the
bottom and right into the smallest configured bucket that holds it (a bucket rounded up
to ``bucket_divisor`` when none does), so the number of compiled shapes is bounded by
the number of buckets. No ground truth is made up: the batch is an
:class:`~msvision.structures.ImageBatch`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import NamedTuple, Optional

import numpy as np

from msvision.data.batching import Bucket, choose_bucket, shrunk_size
from msvision.data.pipeline import PADDING_IMAGE_SIZE, buckets_for
from msvision.data.transforms import resize_image, resized_size
from msvision.structures import ImageBatch

log = logging.getLogger(__name__)


class NetworkImage(NamedTuple):
    """An image resized for the network: ``image [h, w, 3] uint8`` and ``orig_size``, the
    ``(h, w)`` of the image it was made from."""

    image: np.ndarray
    orig_size: tuple[int, int]


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` → ``[H, W, 3] uint8`` RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype} (scale to 0..255 and convert first)")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an image of shape [H, W, 3], got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """The evaluation resize and the bucket an image is padded into.

    Attributes:
      eval_scale, eval_max_size: shortest edge after resizing, cap on the longest.
      buckets: ``(H, W)`` padded shapes to choose from.
      bucket_divisor: edge multiple of a bucket made for an image no bucket holds.
      allow_new_buckets: make such a bucket (a new compile); otherwise the image
        is shrunk into the largest bucket (exported models have fixed shapes).
    """

    eval_scale: int
    eval_max_size: int
    buckets: tuple[Bucket, ...]
    bucket_divisor: int = 128
    allow_new_buckets: bool = True

    @classmethod
    def from_config(cls, data_cfg) -> "Preprocessing":
        return cls(int(data_cfg.eval_scale), int(data_cfg.eval_max_size), tuple(buckets_for(data_cfg)),
                   int(data_cfg.bucket_divisor))

    def network_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of an image of ``size`` after the evaluation resize.

        DETR's rounding can put the longest edge of a very elongated image one
        pixel above ``eval_max_size`` (37×300 → 16×129 for 96/128); it is capped,
        so that such an image does not need a bucket of its own.
        """
        h, w = resized_size(size, self.eval_scale, self.eval_max_size)
        return min(h, self.eval_max_size), min(w, self.eval_max_size)

    def bucket(self, sizes: Sequence[tuple[int, int]]) -> Bucket:
        """The bucket for images of network sizes ``sizes`` (see the class docstring)."""
        need = (max(h for h, _ in sizes), max(w for _, w in sizes))
        if any(b[0] >= need[0] and b[1] >= need[1] for b in self.buckets) or not self.allow_new_buckets:
            return choose_bucket(sizes, self.buckets)
        d = self.bucket_divisor
        return (d * math.ceil(need[0] / d), d * math.ceil(need[1] / d))

    def resize(self, image: np.ndarray) -> NetworkImage:
        """``image`` (``[H, W, 3] uint8`` RGB) resized for the network (PIL bilinear)."""
        orig = tuple(int(v) for v in image.shape[:2])
        size = self.network_size(orig)
        return NetworkImage(image if size == orig else resize_image(image, size), orig)

    def batch(self, images: Sequence[NetworkImage], batch_size: Optional[int] = None) -> ImageBatch:
        """``images`` padded into their bucket (:meth:`bucket`), in a batch of ``batch_size``
        (default ``len(images)``; :func:`pad_images`)."""
        return pad_images(images, self.bucket([im.image.shape[:2] for im in images]), batch_size)


def pad_images(images: Sequence[NetworkImage], bucket: Bucket, batch_size: Optional[int] = None) -> ImageBatch:
    """A numpy :class:`~msvision.structures.ImageBatch` of ``images`` zero-padded to ``bucket``.

    An image larger than ``bucket`` (an exported model's largest bucket) is first shrunk
    into it, keeping its aspect ratio (:func:`msvision.data.batching.shrunk_size`), as
    evaluation's collation does. With ``batch_size`` > ``len(images)`` the batch ends with
    padding slots: a blank image each, evaluation's padding sample
    (:data:`msvision.data.pipeline.PADDING_IMAGE_SIZE`), whose detections are read by no one
    (every layer is padding-aware: they change nothing for the other images).

    Returns:
      ``images [B, H, W, 3] uint8``, ``image_sizes [B, 2] int32`` (the ``(h, w)`` inside
      the padding), ``orig_sizes [B, 2] int32``.
    """
    batch_size = len(images) if batch_size is None else batch_size
    if batch_size < len(images):
        raise ValueError(f"{len(images)} images for a batch of {batch_size}")
    blank = NetworkImage(np.zeros(PADDING_IMAGE_SIZE + (3,), np.uint8), PADDING_IMAGE_SIZE)
    out = np.zeros((batch_size, *bucket, 3), np.uint8)
    image_sizes = np.zeros((batch_size, 2), np.int32)
    orig_sizes = np.zeros((batch_size, 2), np.int32)
    for i, (image, orig_size) in enumerate(list(images) + [blank] * (batch_size - len(images))):
        size = shrunk_size(image.shape[:2], bucket)
        if size != image.shape[:2]:
            log.warning("image of size %s shrunk to %s to fit bucket %s", image.shape[:2], size, bucket)
            image = resize_image(image, size)
        out[i, :size[0], :size[1]] = image
        image_sizes[i] = size
        orig_sizes[i] = orig_size
    return ImageBatch(images=out, image_sizes=image_sizes, orig_sizes=orig_sizes)
