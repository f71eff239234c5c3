"""RetinaNet inference: scores → a fixed number of detections per image (detectron2
``RetinaNet.inference``, fixed shapes).

Per level: ``sigmoid`` scores over all (anchor, class) pairs, the ``nms_candidates``
best above ``score_threshold`` (0.05) — per level, as detectron2's
``test_topk_candidates`` (1000); FQDet's ``nms_candidates`` counts over the whole
image — then their deltas decoded on their anchors and the boxes clipped to the
image. Over all levels: class-aware NMS (``nms_iou`` 0.5), the ``max_detections``
(100) best kept with a valid mask. Only anchors of feature cells inside the image's
valid map are candidates. ``nms_iou``, ``nms_candidates`` and ``max_detections``
are FQDet's inference field names.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from msvision.ops.boxes import clip_boxes, decode_box_deltas
from msvision.ops.nms import batched_nms_padded
from msvision.structures import Detections

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RetinaNetPostProcess:
    """Inference settings (config section ``model.head.inference``; module docstring).

    ``nms_candidates`` counts per pyramid level (detectron2's ``test_topk_candidates``).
    """

    score_threshold: float = 0.05
    nms_candidates: int = 1000
    nms_iou: float = 0.5
    max_detections: int = 100

    def __call__(self, logits: dict[int, Array], deltas: dict[int, Array], anchors: dict[int, np.ndarray],
                 anchor_valid: dict[int, Array], image_sizes: Array) -> Detections:
        """Detections in padded-input pixels, ``max_detections`` per image.

        Args:
          logits: ``{level: [B, n_l, K]}`` float32 class logits (n_l = H_l·W_l·A).
          deltas: ``{level: [B, n_l, 4]}`` float32 Faster R-CNN deltas.
          anchors: ``{level: [n_l, 4]}`` pixels.
          anchor_valid: ``{level: [B, n_l]}`` bool, anchor cell inside the image's valid map.
          image_sizes: ``[B, 2]`` int ``(h, w)`` of the images inside the padding.
        """
        sizes = jnp.asarray(image_sizes, jnp.float32)
        cand_boxes, cand_scores, cand_labels, cand_valid = [], [], [], []
        for level in sorted(logits):
            k_cls = logits[level].shape[-1]
            scores = jax.nn.sigmoid(logits[level])  # [B, n, K]
            scores = jnp.where(anchor_valid[level][..., None], scores, 0.0).reshape(scores.shape[0], -1)
            k = min(self.nms_candidates, scores.shape[1])
            masked = jnp.where(scores > self.score_threshold, scores, -1.0)
            top_scores, top_idx = jax.lax.top_k(masked, k)  # [B, k]
            anchor_idx = top_idx // k_cls
            level_anchors = jnp.asarray(anchors[level])[anchor_idx]  # [B, k, 4]
            level_deltas = jnp.take_along_axis(deltas[level], anchor_idx[..., None], axis=1)
            boxes = clip_boxes(decode_box_deltas(level_deltas, level_anchors), sizes[:, None, :])
            cand_boxes.append(boxes)
            cand_scores.append(top_scores)
            cand_labels.append((top_idx % k_cls).astype(jnp.int32))
            cand_valid.append(top_scores > self.score_threshold)
        boxes = jnp.concatenate(cand_boxes, axis=1)
        scores = jnp.concatenate(cand_scores, axis=1)
        labels = jnp.concatenate(cand_labels, axis=1)
        valid = jnp.concatenate(cand_valid, axis=1)

        def nms_one(b, s, l, v):
            return batched_nms_padded(b, s, l, self.nms_iou, self.max_detections, valid=v)

        keep, keep_valid = jax.vmap(nms_one)(boxes, scores, labels, valid)
        take = lambda x: jnp.take_along_axis(x, keep if x.ndim == 2 else keep[..., None], axis=1)  # noqa: E731
        return Detections(
            boxes=jnp.where(keep_valid[..., None], take(boxes), 0.0),
            scores=jnp.where(keep_valid, take(scores), 0.0),
            labels=jnp.where(keep_valid, take(labels), 0),
            valid=keep_valid,
        )
