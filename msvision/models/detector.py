"""The backbone–neck–head meta architecture (thesis section 2.1, figure 2.1)."""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.interfaces import DetectionHead, QueryDetectionHead, SegmentationHead
from msvision.ops.boxes import clip_boxes, scale_boxes
from msvision.structures import Batch, Detections, ImageBatch

Array = jax.Array

# torchvision ImageNet statistics in 0..255 pixel units (RGB).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class Detector(nnx.Module):
    """``head(neck(backbone(normalise(images))))`` [+ ``seg_head`` for masks].

    The attribute names ``backbone``, ``neck``, ``head`` matter: the optimizer
    gives every parameter under ``backbone`` the backbone learning rate.

    Args:
      backbone: ``images [B, H, W, 3] → {level: feature}``.
      neck: ``{level: feature} → {level: [B, H_l, W_l, D]}``.
      head: a :class:`~msvision.models.interfaces.DetectionHead`; with a ``seg_head``, a
        :class:`~msvision.models.interfaces.QueryDetectionHead`.
      seg_head: optional :class:`~msvision.models.interfaces.SegmentationHead` (thesis
        chapter 5), fed the head's :class:`~msvision.structures.QueryOutputs`.
      pixel_mean, pixel_std: RGB normalisation in 0..255 units.
      dtype: compute dtype of the network (e.g. ``jnp.bfloat16``); parameters stay
        float32 and losses are computed in float32.
    """

    def __init__(
        self,
        backbone: nnx.Module,
        neck: nnx.Module,
        head: DetectionHead | QueryDetectionHead,
        seg_head: SegmentationHead | None = None,
        *,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        dtype=jnp.float32,
    ):
        if seg_head is not None and not head.provides_queries:
            raise ValueError(f"a segmentation head needs a query-based detection head, got {type(head).__name__}")
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.seg_head = seg_head
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.dtype = dtype

    def normalize_images(self, batch: ImageBatch) -> Array:
        """``[B, H, W, 3]`` uint8 → normalised ``dtype`` images, zero on the padding."""
        images = jnp.asarray(batch.images, jnp.float32)
        images = (images - jnp.asarray(self.pixel_mean)) / jnp.asarray(self.pixel_std)
        mask = batch.pixel_mask(jnp)[..., None]
        return jnp.where(mask, images, 0.0).astype(self.dtype)

    def pyramid(self, batch: ImageBatch, rng: Optional[Array] = None) -> dict[int, Array]:
        """The neck's pyramid; every part is padding-aware (``batch.image_sizes``), so an
        image's features do not depend on the padding of its batch. ``rng``: a key for
        the backbone's training-time randomness (Swin's stochastic depth); None at
        inference."""
        image_sizes = jnp.asarray(batch.image_sizes, jnp.int32)
        features = self.backbone(self.normalize_images(batch), image_sizes, rng=rng)
        return self.neck(features, image_sizes)

    def losses(self, batch: Batch, rng: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
        """Total loss (float32 scalar) and a dict of scalar metrics; ``rng`` as in :meth:`pyramid`
        (the train step passes one per step)."""
        # Heads cast their outputs to float32 before the losses.
        pyramid = self.pyramid(batch, rng)
        if self.seg_head is None:
            loss, metrics = self.head.losses(pyramid, batch)
        else:
            loss, metrics, queries = self.head.losses_with_queries(pyramid, batch)
            # The key of the head's training-time randomness (PointRend++'s point sampling).
            seg_rng = None if rng is None else jax.random.fold_in(rng, 1)
            seg_loss, seg_metrics = self.seg_head.losses(pyramid, batch, queries, rng=seg_rng)
            loss = loss + seg_loss
            metrics = dict(metrics, **seg_metrics)
        return loss.astype(jnp.float32), {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    def predict(self, inputs: ImageBatch) -> Detections:
        """Detections with boxes in ORIGINAL image pixels, clipped to the original size
        (with a segmentation head also ``masks`` on ``mask_boxes``, in original pixels, unclipped).

        ``inputs``: the images alone; a :class:`~msvision.structures.Batch` (evaluation's)
        is one too, and its ground truth is not read.
        """
        pyramid = self.pyramid(inputs)
        if self.seg_head is None:
            dets = self.head.predict(pyramid, inputs)
        else:
            dets, queries = self.head.predict_with_queries(pyramid, inputs)
            dets = self.seg_head.predict(pyramid, inputs, dets, queries)
        # max(·, 1): padding samples of an incomplete eval batch have size 0.
        image_sizes = jnp.maximum(jnp.asarray(inputs.image_sizes, jnp.float32), 1.0)  # resized (h, w)
        orig_sizes = jnp.asarray(inputs.orig_sizes, jnp.float32)
        inv_scale_hw = orig_sizes / image_sizes  # evaluation resizes without cropping
        boxes = scale_boxes(dets.boxes.astype(jnp.float32), inv_scale_hw[:, None, ::-1])
        boxes = clip_boxes(boxes, orig_sizes[:, None, :])
        dets = dets.replace(boxes=jnp.where(dets.valid[..., None], boxes, 0.0))
        if dets.mask_boxes is not None:
            mask_boxes = scale_boxes(dets.mask_boxes.astype(jnp.float32), inv_scale_hw[:, None, ::-1])
            dets = dets.replace(mask_boxes=jnp.where(dets.valid[..., None], mask_boxes, 0.0))
        return dets
