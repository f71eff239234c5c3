"""The inference function of a model: images in, detections in original pixels out.

One pure function serves live prediction (:class:`msvision.inference.predictor.Predictor`
jits it) and export (:func:`msvision.inference.exporter.export_detector` serialises it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Detections as arrays: boxes [B, K, 4] float32 (x0, y0, x1, y1) in original-image pixels,
# scores [B, K] float32, labels [B, K] int32 contiguous, valid [B, K] bool; with a segmentation
# head also masks [B, K, S, S] float32 probabilities on mask_boxes [B, K, 4] (original pixels).
DetectFn = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]


def make_detect_function(graphdef, weights_treedef) -> Callable:
    """The pure inference function of a model, shared by live prediction and export.

    Returns ``detect(weights, images, image_sizes, orig_sizes) -> dict`` with

    - ``weights``: the flat leaves of ``(params, rest)`` (``weights_treedef`` unflattens them);
    - ``images``: ``[B, H, W, 3] uint8`` RGB, resized and zero-padded at the bottom/right;
    - ``image_sizes``: ``[B, 2] int32`` ``(h, w)`` of the resized image inside the padding;
    - ``orig_sizes``: ``[B, 2] int32`` ``(h, w)`` of the image file;

    and the output ``{"boxes": [B, K, 4] float32 (x0, y0, x1, y1) in original
    pixels, "scores": [B, K] float32, "labels": [B, K] int32, "valid": [B, K] bool}``;
    a model with a segmentation head (``model.seg_head``) adds ``"masks": [B, K, S, S]
    float32`` probabilities, each on the S × S split of ``"mask_boxes": [B, K, 4] float32``
    ``(x0, y0, x1, y1)`` in original pixels (unclipped; ``Detections.masks``).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from msvision.structures import ImageBatch

    def detect(weights, images, image_sizes, orig_sizes):
        params, rest = jax.tree.unflatten(weights_treedef, list(weights))
        model = nnx.merge(graphdef, params, rest)
        dets = model.predict(ImageBatch(images=images, image_sizes=image_sizes, orig_sizes=orig_sizes))
        out = dict(boxes=dets.boxes, scores=dets.scores, labels=dets.labels, valid=dets.valid)
        if dets.masks is not None:
            out.update(masks=dets.masks.astype(jnp.float32), mask_boxes=dets.mask_boxes.astype(jnp.float32))
        return out

    return detect
