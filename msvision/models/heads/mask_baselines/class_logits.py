"""Class-specific mask logits of the ++ baselines (thesis §5.4.1): picking each RoI's class,
the per-RoI loss and the accuracy.

- :func:`pick_class` / :func:`detection_masks`: the logits of each RoI's (training) or each
  detection's (inference) class.
- :func:`per_roi_bce`: sigmoid BCE, mean per RoI, summed over the RoIs of an image,
  averaged over images (the released code's ``loss / (28·28)`` summed over RoIs, DetSeg
  ``models/heads/seg/mmdet_roi.py``, at one image per GPU, thesis §5.4.1).
- :func:`accuracy`: the fraction of correctly classified cells (or points).

RoIs, query fusion and the eq. 5.3 scores are shared with EffSeg:
:mod:`msvision.models.heads.roi_mask`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msvision.ops import losses as loss_ops

Array = jax.Array


def pick_class(logits: Array, labels: Array) -> Array:
    """``logits [B, R, ..., num_classes]`` at each RoI's class ``labels [B, R]`` → ``[B, R, ...]``."""
    index = labels.reshape(labels.shape + (1,) * (logits.ndim - labels.ndim))
    return jnp.take_along_axis(logits, index, axis=-1)[..., 0]


def detection_masks(logits: Array, inverse: Array, labels: Array) -> Array:
    """``logits [B, R, ..., num_classes]`` per RoI slot → ``[B, K, ...]`` each detection's
    RoI ``inverse [B, K]`` at its class ``labels [B, K]`` (one gather)."""
    b = jnp.arange(logits.shape[0])[:, None]
    middle = (slice(None),) * (logits.ndim - 3)
    return logits[(b, inverse) + middle + (labels,)]


def per_roi_bce(logits: Array, targets: Array, valid: Array) -> Array:
    """Scalar: mean over images of Σ_RoIs mean-per-RoI sigmoid BCE.

    Args:
      logits, targets: ``[B, R, ...]`` float32 (targets in [0, 1]); valid: ``[B, R]`` bool.
    """
    bce = loss_ops.sigmoid_bce_loss(logits.astype(jnp.float32), targets.astype(jnp.float32))
    per_roi = jnp.mean(bce.reshape(bce.shape[:2] + (-1,)), axis=-1)
    return jnp.mean(jnp.sum(jnp.where(valid, per_roi, 0.0), axis=1))


def accuracy(logits: Array, targets: Array, valid: Array) -> Array:
    """Fraction of the valid RoIs' cells (or points) where ``logit > 0`` equals ``target > 0.5``."""
    correct = (logits > 0) == (targets > 0.5)
    mask = jnp.broadcast_to(valid.reshape(valid.shape + (1,) * (logits.ndim - 2)), logits.shape)
    return jnp.sum(correct & mask) / jnp.maximum(jnp.sum(mask), 1)


__all__ = ["pick_class", "detection_masks", "per_roi_bce", "accuracy"]
