"""RetinaNet losses and their normalisation (thesis 3.4.1).

  cls  sigmoid focal loss (``focal_alpha`` 0.25, ``focal_gamma`` 2) summed over the
       non-ignored anchors and all classes; the target of a positive anchor is the
       one-hot class of its gt, of a negative anchor all zeros.
  box  on Faster R-CNN deltas of the positive anchors, summed: ``box='l1'`` (the
       thesis's default here) or ``'smooth_l1'`` with ``smooth_l1_beta`` (0.1,
       detectron2's default); times ``box_weight`` (1).

Normalisation (``normalization``; the thesis: "we normalize the losses per feature
map (instead of over the whole feature pyramid)"):
  ``'per_level'`` (thesis): for every level l, that level's summed class and box
    losses are divided by N_l, an exponential moving average (momentum
    ``normalizer_momentum`` 0.9, as detectron2's ``loss_normalizer``) of the number
    of positive anchors of that level in the batch (``max(·, 1)``), and the level
    losses are summed. This is exactly the author's ``RetinaHead`` (DetSeg
    ``models/heads/retina.py``: per-map ``loss_normalizers`` buffer, EMA update,
    ``sum(map_loss / norm)``).
  ``'global'``: detectron2: one EMA of the number of positives of the whole pyramid
    divides the summed losses.
The EMA itself is state of the head (its ``loss_normalizer`` variable, starting at
``normalizer_init``); the criterion takes its value and returns the updated one.
``normalizer_momentum=0`` uses the current batch's count (stateless).

The field names shared with FQDet's criterion mean the same there (``focal_alpha``,
``focal_gamma``, ``box``, ``box_weight``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msvision.ops.boxes import encode_box_deltas
from msvision.ops.losses import l1_loss, sigmoid_focal_loss, smooth_l1_loss

Array = jax.Array

BOX_LOSSES = ("l1", "smooth_l1")
NORMALIZATIONS = ("per_level", "global")


@dataclasses.dataclass(frozen=True)
class RetinaNetCriterion:
    """The losses (config section ``model.head.loss``; module docstring)."""

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box: str = "l1"
    smooth_l1_beta: float = 0.1
    box_weight: float = 1.0
    normalization: str = "per_level"
    normalizer_momentum: float = 0.9
    normalizer_init: float = 100.0

    def __post_init__(self):
        for name, value, allowed in (("box", self.box, BOX_LOSSES),
                                     ("normalization", self.normalization, NORMALIZATIONS)):
            if value not in allowed:
                raise ValueError(f"loss.{name} must be one of {allowed}, got {value!r}")

    def num_normalizers(self, num_levels: int) -> int:
        """Length of the EMA state: one per level (``'per_level'``) or one."""
        return num_levels if self.normalization == "per_level" else 1

    def __call__(self, logits: Array, deltas: Array, anchors: np.ndarray, level_sizes: Sequence[int],
                 label: Array, cls_target: Array, box_target: Array, normalizer: Array
                 ) -> tuple[Array, dict[str, Array], Array]:
        """Focal + box loss of a batch, normalised (module docstring). fp32.

        Args:
          logits: ``[B, N, K]`` float32, all levels concatenated (N = Σ_l level_sizes[l]).
          deltas: ``[B, N, 4]`` float32 predicted Faster R-CNN deltas.
          anchors: ``[N, 4]`` float32 pixels.
          level_sizes: anchors per level, in the order of the concatenation.
          label, cls_target, box_target: ``[B, N]``, ``[B, N]``, ``[B, N, 4]`` from
            :class:`.RetinaNetMatcher`.
          normalizer: ``[num_normalizers]`` the EMA of positive anchors so far.

        Returns:
          ``(loss, metrics, normalizer)``: the scalar loss; ``loss_cls``, ``loss_box``
          and ``num_positive_anchors`` (per image); the updated EMA (no gradient).
        """
        num_classes = logits.shape[-1]
        positive = label == 1
        onehot = jax.nn.one_hot(cls_target, num_classes, dtype=jnp.float32) * positive[..., None]
        cls_loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma).sum(-1)
        cls_loss = jnp.where(label >= 0, cls_loss, 0.0)  # [B, N]

        delta_target = encode_box_deltas(box_target, jnp.asarray(anchors)[None])
        if self.box == "l1":
            box_loss = l1_loss(deltas, delta_target)
        else:
            box_loss = smooth_l1_loss(deltas, delta_target, self.smooth_l1_beta)
        box_loss = jnp.where(positive, box_loss.sum(-1), 0.0)  # [B, N]

        # [N, L] one-hot of each anchor's level (compile-time constant).
        level_onehot = np.repeat(np.eye(len(level_sizes), dtype=np.float32), level_sizes, axis=0)
        cls_per_level = jnp.einsum("bn,nl->l", cls_loss, level_onehot)
        box_per_level = jnp.einsum("bn,nl->l", box_loss, level_onehot)
        pos_per_level = jnp.einsum("bn,nl->l", positive.astype(jnp.float32), level_onehot)
        if self.normalization == "global":
            cls_per_level, box_per_level = cls_per_level.sum(keepdims=True), box_per_level.sum(keepdims=True)
            num_pos = pos_per_level.sum(keepdims=True)
        else:
            num_pos = pos_per_level
        m = self.normalizer_momentum
        normalizer = m * normalizer + (1 - m) * jnp.maximum(num_pos, 1.0)
        normalizer = jax.lax.stop_gradient(normalizer)

        loss_cls = jnp.sum(cls_per_level / normalizer)
        loss_box = self.box_weight * jnp.sum(box_per_level / normalizer)
        metrics = {
            "loss_cls": loss_cls,
            "loss_box": loss_box,
            "num_positive_anchors": jnp.sum(pos_per_level) / logits.shape[0],
        }
        return loss_cls + loss_box, metrics, normalizer
