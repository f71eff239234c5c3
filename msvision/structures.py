"""Padded containers passed between the data pipeline, the models and evaluation.

Every array has a static shape: images are padded to a bucket shape, ground truth
to ``max_instances`` slots with a ``valid`` mask, detections to a fixed count.
The containers are pytrees (``flax.struct.dataclass``), so they pass through
``jax.jit`` and ``jax.device_put`` unchanged; the data pipeline fills them with
numpy arrays, the train step sees them as sharded ``jax.Array``s.

Coordinate convention everywhere: boxes are ``(x0, y0, x1, y1)`` in pixels of the
image they refer to, x to the right, y down; a pixel ``(i, j)`` covers
``[j, j+1) x [i, i+1)``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from flax import struct

Array = Any  # np.ndarray or jax.Array


@struct.dataclass
class ImageBatch:
    """A padded batch of images, what inference needs (no ground truth).

    Attributes:
      images: ``[B, H, W, 3] uint8`` RGB, resized and zero-padded at the bottom and
        right to the batch's bucket shape ``(H, W)``.
      image_sizes: ``[B, 2] int32`` ``(h, w)`` of the resized image inside the
        padding (the valid region is ``[:h, :w]``).
      orig_sizes: ``[B, 2] int32`` ``(h, w)`` of the image as stored on disk.
    """

    images: Array
    image_sizes: Array
    orig_sizes: Array

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def pixel_mask(self, xp=np) -> Array:
        """``[B, H, W] bool``: True on image pixels, False on padding.

        ``xp`` is the array module (``numpy`` or ``jax.numpy``).
        """
        h, w = self.images.shape[1:3]
        rows = xp.arange(h)[None, :, None] < self.image_sizes[:, 0, None, None]
        cols = xp.arange(w)[None, None, :] < self.image_sizes[:, 1, None, None]
        return rows & cols


@struct.dataclass
class Batch(ImageBatch):
    """A padded batch of images (the fields of :class:`ImageBatch`) with their padded
    ground truth.

    Attributes:
      images, image_sizes, orig_sizes: as in :class:`ImageBatch`.
      image_ids: ``[B] int32`` dataset image ids; ``-1`` marks a padding sample
        (an incomplete last batch in evaluation).
      boxes: ``[B, M, 4] float32`` ground-truth boxes ``(x0, y0, x1, y1)`` in pixels
        of the resized image; zero in unused slots.
      labels: ``[B, M] int32`` contiguous class labels ``0 … K-1``; ``0`` in unused
        slots (always read together with ``valid``).
      valid: ``[B, M] bool`` slot holds a real annotation (crowd or not).
      is_crowd: ``[B, M] bool`` the annotation is a COCO ``iscrowd`` region: never a
        positive target, anchors/queries overlapping it are ignored.
      masks: optional ``[B, M, H, W] bool`` instance masks on the padded image grid
        (only when the pipeline is asked for masks); with ``mask_boxes``, box-frame
        masks instead: ``[B, M, S, S] uint8`` coverage (0..255) of the S × S split of
        ``mask_boxes[b, m]`` (:mod:`msvision.data.box_masks`).
      mask_boxes: optional ``[B, M, 4] float32`` ``(x0, y0, x1, y1)`` pixels, the box
        each box-frame mask covers (None for full-image masks).
    """

    image_ids: Array
    boxes: Array
    labels: Array
    valid: Array
    is_crowd: Array
    masks: Optional[Array] = None
    mask_boxes: Optional[Array] = None

    @property
    def max_instances(self) -> int:
        return self.boxes.shape[1]


@struct.dataclass
class Detections:
    """A fixed number of detections per image.

    Attributes:
      boxes: ``[B, K, 4] float32`` ``(x0, y0, x1, y1)``; in pixels of the padded
        network input as heads return them, in pixels of the original image after
        :func:`msvision.models.detector.Detector.predict`.
      scores: ``[B, K] float32`` confidence, descending within an image; 0 where
        invalid.
      labels: ``[B, K] int32`` contiguous class labels.
      valid: ``[B, K] bool`` True for the first ``num_valid`` entries of each image.
      masks: optional ``[B, K, h, w] float32`` mask probabilities on a per-box
        grid (segmentation heads): cell (i, j) covers the ``(i, j)``-th of ``h × w``
        equal parts of ``mask_boxes[b, k]``.
      mask_boxes: optional ``[B, K, 4] float32`` ``(x0, y0, x1, y1)`` the box each
        mask grid covers (the unclipped predicted box of the detection's query; the
        detection box itself is clipped to the image), same pixels as ``boxes``.
    """

    boxes: Array
    scores: Array
    labels: Array
    valid: Array
    masks: Optional[Array] = None
    mask_boxes: Optional[Array] = None

    @property
    def num_valid(self) -> Array:
        return self.valid.sum(axis=-1)


@struct.dataclass
class QueryOutputs:
    """What a query-based detection head hands to a segmentation head (thesis §5.3.3).

    Attributes:
      queries: ``[B, Q, D]`` query features after the last decoder layer.
      boxes: ``[B, Q, 4] float32`` predicted boxes ``(x0, y0, x1, y1)`` in pixels of
        the padded network input, unclipped.
      matched: ``[B, Q] int32`` ground-truth slot of each query (training; 0 for
        negatives), or None at inference.
      positive: ``[B, Q] bool`` the query is matched (training), or None.
      match_quality: ``[B, Q] float32`` IoU of the query's box prior with its matched
        ground truth (orders the positives of one object), or None.
      detection_queries: ``[B, K] int32`` query of each detection (inference), or None.
    """

    queries: Array
    boxes: Array
    matched: Optional[Array] = None
    positive: Optional[Array] = None
    match_quality: Optional[Array] = None
    detection_queries: Optional[Array] = None
