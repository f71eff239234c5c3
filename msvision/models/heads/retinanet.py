"""The thesis's RetinaNet head (section 3.4.1).

"We follow the implementation and settings from Detectron2, except that the last
layer of the subnets has kernel size 1 (instead of 3) and that we normalize the
losses per feature map (instead of over the whole feature pyramid)."

Architecture (detectron2 ``RetinaNetHead``, no norm): class and box subnets, each
``num_convs`` (C) hidden 3×3 convs (D→D, ReLU) shared over levels, then a 1×1
conv to ``A·K`` logits / ``A·4`` deltas (``last_kernel_size=3``: detectron2's and
torchvision's 3×3 last layers). Init N(0, 0.01) weights, zero bias; the
class bias is ``-log((1 - π)/π)``, π = 0.01.

Anchors: 3 sizes × 3 aspect ratios per level, sizes ``4·2^l·2^(j/3)``, centres at
``stride·(x + offset)`` with ``offset = 0`` as detectron2's
``DefaultAnchorGenerator`` (used by the author's ``retina.py`` too).

Targets: absolute IoU matching (≥ 0.5 positive, < 0.4 negative, ignore between,
low-quality matches as detectron2; anchors mostly inside crowd boxes ignored,
see :func:`msvision.ops.matching.absolute_iou_matching`). Box targets: Faster
R-CNN deltas, weights (1, 1, 1, 1). Crowd boxes are never positives; two rules
that neither the thesis nor the released code has are switches, off by default:
``crowd_ignore`` (anchors more than 70 % inside a crowd box are ignored rather
than negative) and ``ignore_padding_anchors`` (anchors of feature cells outside the
image's valid map are never negatives).

Losses: sigmoid focal (α 0.25, γ 2) summed over non-ignored anchors and classes;
box L1 (thesis default here; detectron2 uses smooth-L1 β 0.1: ``box_loss``)
summed over positives.

Normalisation (``loss_normalization``):
  ``'per_level'`` (thesis): for every level l, that level's summed class and box
    losses are divided by N_l, an exponential moving average (momentum 0.9, as
    detectron2's ``loss_normalizer``) of the number of positive anchors of that
    level in the batch (``max(·, 1)``), and the level losses are summed. This is
    exactly the author's ``RetinaHead`` (DetSeg ``models/heads/retina.py``:
    per-map ``loss_normalizers`` buffer, EMA update, ``sum(map_loss / norm)``).
  ``'global'``: detectron2: one EMA of the number of positives of the whole
    pyramid divides the summed losses.
  The EMA lives in a ``LossNormalizer`` variable updated by :meth:`losses`; the
  train step must carry non-``Param`` state forward for it to move (otherwise the
  normaliser stays near ``loss_normalizer_init``). ``loss_normalizer_momentum=0``
  uses the current batch's count (stateless).

Inference (detectron2, fixed shapes): per level, scores ``sigmoid`` over all
(anchor, class) pairs, the ``topk_candidates`` best above ``score_threshold``,
decode, clip to the image size, class-aware NMS (IoU 0.5) over all levels, the
``max_detections`` best with a valid mask. Only anchors of feature cells inside
the image's valid map are candidates, and the subnets' convolutions see zeros
outside it, so an image's detections do not depend on its batch
(:mod:`msvision.ops.padding`).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import flax.errors
import numpy as np
from flax import nnx

from msvision.models.layers import Conv2d
from msvision.ops.anchors import AnchorSpec, anchor_cells, anchors_in_valid_map
from msvision.ops.padding import padding_mask
from msvision.ops.boxes import box_ioa, box_iou, clip_boxes, decode_box_deltas, encode_box_deltas
from msvision.ops.losses import l1_loss, sigmoid_focal_loss, smooth_l1_loss
from msvision.ops.matching import absolute_iou_matching
from msvision.ops.nms import batched_nms_padded
from msvision.structures import Batch, Detections, ImageBatch

Array = jax.Array


class LossNormalizer(nnx.Variable):
    """EMA of the number of positive anchors (per level or global); not trained."""


class RetinaNetHead(nnx.Module):
    """RetinaNet head over pyramid levels ``levels`` (see module docstring).

    ``__call__(pyramid)`` returns ``(logits, deltas)``: ``{level: [B, H_l·W_l·A, K]}``
    and ``{level: [B, H_l·W_l·A, 4]}`` in float32 (row-major location, then cell
    anchor, as :mod:`msvision.ops.anchors`).
    """

    provides_queries = False  # no queries: cannot feed a segmentation head (models/interfaces.py)

    def __init__(
        self,
        num_classes: int,
        levels: Sequence[int] = (3, 4, 5, 6, 7),
        channels: int = 256,
        *,
        num_convs: int = 1,
        last_kernel_size: int = 1,
        anchors: AnchorSpec = AnchorSpec(offset=0.0),
        prior_prob: float = 0.01,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss: str = "l1",
        smooth_l1_beta: float = 0.1,
        box_loss_weight: float = 1.0,
        pos_iou: float = 0.5,
        neg_iou: float = 0.4,
        allow_low_quality: bool = True,
        crowd_ignore: bool = False,
        ignore_padding_anchors: bool = False,
        loss_normalization: str = "per_level",
        loss_normalizer_momentum: float = 0.9,
        loss_normalizer_init: float = 100.0,
        topk_candidates: int = 1000,
        score_threshold: float = 0.05,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if box_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"box_loss must be 'l1' or 'smooth_l1', got {box_loss!r}")
        if loss_normalization not in ("per_level", "global"):
            raise ValueError(f"loss_normalization must be 'per_level' or 'global', got {loss_normalization!r}")
        self.num_classes = num_classes
        self.levels = tuple(sorted(levels))
        self.anchor_spec = anchors
        self.num_anchors = anchors.num_types
        self.crowd_ignore = crowd_ignore
        self.ignore_padding_anchors = ignore_padding_anchors
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_loss = box_loss
        self.smooth_l1_beta = smooth_l1_beta
        self.box_loss_weight = box_loss_weight
        self.pos_iou = pos_iou
        self.neg_iou = neg_iou
        self.allow_low_quality = allow_low_quality
        self.loss_normalization = loss_normalization
        self.loss_normalizer_momentum = loss_normalizer_momentum
        self.topk_candidates = topk_candidates
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections

        init = dict(kernel_init=nnx.initializers.normal(0.01), dtype=dtype, rngs=rngs)
        self.cls_subnet = nnx.List([Conv2d(channels, channels, 3, **init) for _ in range(num_convs)])
        self.box_subnet = nnx.List([Conv2d(channels, channels, 3, **init) for _ in range(num_convs)])
        prior_bias = -math.log((1 - prior_prob) / prior_prob)
        self.cls_score = Conv2d(
            channels, self.num_anchors * num_classes, last_kernel_size,
            bias_init=nnx.initializers.constant(prior_bias), **init
        )
        self.bbox_pred = Conv2d(channels, self.num_anchors * 4, last_kernel_size, **init)
        num_normalizers = len(self.levels) if loss_normalization == "per_level" else 1
        self.loss_normalizer = LossNormalizer(jnp.full((num_normalizers,), loss_normalizer_init, jnp.float32))

    # --- network ---------------------------------------------------------------------

    def __call__(self, pyramid: dict[int, Array], image_sizes: Array | None = None
                 ) -> tuple[dict[int, Array], dict[int, Array]]:
        logits, deltas = {}, {}
        for level in self.levels:
            x = pyramid[level]
            b, h, w, _ = x.shape
            mask = padding_mask(image_sizes, (h, w), 2**level)
            c = x
            for conv in self.cls_subnet:
                c = jax.nn.relu(conv(c, mask))
            r = x
            for conv in self.box_subnet:
                r = jax.nn.relu(conv(r, mask))
            logits[level] = self.cls_score(c, mask).astype(jnp.float32).reshape(
                b, h * w * self.num_anchors, self.num_classes)
            deltas[level] = self.bbox_pred(r, mask).astype(jnp.float32).reshape(b, h * w * self.num_anchors, 4)
        return logits, deltas

    def anchors(self, pyramid: dict[int, Array]) -> dict[int, np.ndarray]:
        """``{level: [H_l·W_l·A, 4]}`` anchors in padded-input pixels (trace-time constants)."""
        return {l: self.anchor_spec.pyramid({l: tuple(pyramid[l].shape[1:3])}) for l in self.levels}

    def anchor_valid(self, pyramid: dict[int, Array], image_sizes: Array) -> dict[int, Array]:
        """``{level: [B, H_l·W_l·A] bool}``: the anchor's cell lies in the image's valid map."""
        out = {}
        for l in self.levels:
            cells, strides = anchor_cells({l: tuple(pyramid[l].shape[1:3])}, self.num_anchors)
            out[l] = anchors_in_valid_map(cells, strides, image_sizes)
        return out

    # --- training --------------------------------------------------------------------

    def targets(self, anchors: np.ndarray, batch: Batch, anchor_valid: Array | None = None
                ) -> tuple[Array, Array, Array]:
        """Anchor labels for a batch.

        Args:
          anchors: ``[N, 4]`` all levels concatenated.
          batch: ground truth in padded-input pixels.
          anchor_valid: ``[B, N]`` bool, anchor cell inside the valid map (used by
            ``ignore_padding_anchors``).

        Returns:
          match_label ``[B, N]`` int32 (1 positive, 0 negative, -1 ignore),
          cls_target ``[B, N]`` int32 class of the matched gt,
          box_target ``[B, N, 4]`` matched gt box (the anchor itself where not
          positive, so encoding never sees degenerate boxes).
        """
        anchors_j = jnp.asarray(anchors)
        gt_boxes = jnp.asarray(batch.boxes, jnp.float32)

        def match_one(boxes, valid, is_crowd):
            iou = box_iou(anchors_j, boxes)
            ioa = box_ioa(anchors_j, boxes)
            return absolute_iou_matching(
                iou, valid, pos_iou=self.pos_iou, neg_iou=self.neg_iou,
                allow_low_quality=self.allow_low_quality, gt_is_crowd=is_crowd,
                crowd_ioa=ioa if self.crowd_ignore else None,
            )

        matched, label = jax.vmap(match_one)(gt_boxes, jnp.asarray(batch.valid), jnp.asarray(batch.is_crowd))
        if self.ignore_padding_anchors and anchor_valid is not None:
            label = jnp.where((label == 0) & ~anchor_valid, -1, label)
        cls_target = jnp.take_along_axis(jnp.asarray(batch.labels), matched, axis=1)
        box_target = jnp.take_along_axis(gt_boxes, matched[..., None], axis=1)
        box_target = jnp.where((label == 1)[..., None], box_target, anchors_j[None])
        return label, cls_target, box_target

    def losses(self, pyramid: dict[int, Array], batch: Batch) -> tuple[Array, dict[str, Array]]:
        """Focal + box loss, normalised per level (see module docstring). fp32."""
        image_sizes = jnp.asarray(batch.image_sizes, jnp.int32)
        logits, deltas = self(pyramid, image_sizes)
        anchors = self.anchors(pyramid)
        level_sizes = [anchors[l].shape[0] for l in self.levels]
        all_anchors = np.concatenate([anchors[l] for l in self.levels])
        logits = jnp.concatenate([logits[l] for l in self.levels], axis=1)  # [B, N, K]
        deltas = jnp.concatenate([deltas[l] for l in self.levels], axis=1)  # [B, N, 4]
        valid = self.anchor_valid(pyramid, image_sizes)
        anchor_valid = jnp.concatenate([valid[l] for l in self.levels], axis=1)
        label, cls_target, box_target = self.targets(all_anchors, batch, anchor_valid)
        positive = label == 1

        onehot = jax.nn.one_hot(cls_target, self.num_classes, dtype=jnp.float32) * positive[..., None]
        cls_loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma).sum(-1)
        cls_loss = jnp.where(label >= 0, cls_loss, 0.0)  # [B, N]

        delta_target = encode_box_deltas(box_target, jnp.asarray(all_anchors)[None])
        if self.box_loss == "l1":
            box_loss = l1_loss(deltas, delta_target)
        else:
            box_loss = smooth_l1_loss(deltas, delta_target, self.smooth_l1_beta)
        box_loss = jnp.where(positive, box_loss.sum(-1), 0.0)  # [B, N]

        # [N, L] one-hot of each anchor's level (compile-time constant).
        level_onehot = np.repeat(np.eye(len(self.levels), dtype=np.float32), level_sizes, axis=0)
        cls_per_level = jnp.einsum("bn,nl->l", cls_loss, level_onehot)
        box_per_level = jnp.einsum("bn,nl->l", box_loss, level_onehot)
        pos_per_level = jnp.einsum("bn,nl->l", positive.astype(jnp.float32), level_onehot)
        if self.loss_normalization == "global":
            cls_per_level, box_per_level = cls_per_level.sum(keepdims=True), box_per_level.sum(keepdims=True)
            num_pos = pos_per_level.sum(keepdims=True)
        else:
            num_pos = pos_per_level
        m = self.loss_normalizer_momentum
        normalizer = m * self.loss_normalizer[...] + (1 - m) * jnp.maximum(num_pos, 1.0)
        normalizer = jax.lax.stop_gradient(normalizer)
        if m > 0:
            try:
                self.loss_normalizer[...] = normalizer
            except flax.errors.TraceContextError as e:
                raise RuntimeError(
                    "RetinaNetHead keeps an EMA of the positive-anchor count (loss_normalizer_momentum > 0): "
                    "the train step must build the model inside the differentiated function with "
                    "nnx.merge(graphdef, params, rest, copy=True) and carry nnx.state(model, nnx.Not(nnx.Param)) "
                    "forward; or set model.head.loss_normalizer_momentum=0 (current-batch count)."
                ) from e

        loss_cls = jnp.sum(cls_per_level / normalizer)
        loss_box = self.box_loss_weight * jnp.sum(box_per_level / normalizer)
        metrics = {
            "loss_cls": loss_cls,
            "loss_box": loss_box,
            "num_positive_anchors": jnp.sum(pos_per_level) / logits.shape[0],
        }
        return loss_cls + loss_box, metrics

    # --- inference -------------------------------------------------------------------

    def predict(self, pyramid: dict[int, Array], batch: ImageBatch) -> Detections:
        """Detections in padded-input pixels, ``max_detections`` per image."""
        image_sizes = jnp.asarray(batch.image_sizes, jnp.int32)
        logits, deltas = self(pyramid, image_sizes)
        anchors = self.anchors(pyramid)
        anchor_valid = self.anchor_valid(pyramid, image_sizes)
        k_cls = self.num_classes
        sizes = jnp.asarray(batch.image_sizes, jnp.float32)
        cand_boxes, cand_scores, cand_labels, cand_valid = [], [], [], []
        for level in self.levels:
            scores = jax.nn.sigmoid(logits[level])  # [B, n, K]
            scores = jnp.where(anchor_valid[level][..., None], scores, 0.0).reshape(scores.shape[0], -1)
            k = min(self.topk_candidates, scores.shape[1])
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
        take = lambda x: jnp.take_along_axis(x, keep if x.ndim == 2 else keep[..., None], axis=1)
        return Detections(
            boxes=jnp.where(keep_valid[..., None], take(boxes), 0.0),
            scores=jnp.where(keep_valid, take(scores), 0.0),
            labels=jnp.where(keep_valid, take(labels), 0),
            valid=keep_valid,
        )
