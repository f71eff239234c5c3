"""FQDet and FQDetV2: query-based two-stage detection heads (thesis chapter 4).

Stage 1 (thesis 4.3.3): anchors of ``S`` sizes × ``R`` aspect ratios on every neck
feature (sizes ``4·2^(l + j/S)``, centres ``stride·(x + 0.5)``, author notes §2); a
selector network (:class:`~msvision.models.heads.fqdet_parts.Selector`) scores
every feature–anchor pair; the top ``num_queries`` pairs per image (anchors centred
in the batch padding excluded) become the queries, their anchors the box priors.
Selection loss: sigmoid focal loss (α 0.25, γ 2) with static top-k targets (k = 5):
an anchor is positive when it is among the k anchors of highest IoU with a gt box.

Stage 2: per-anchor-type transition networks, ``num_layers`` decoder layers (MSDA
cross-attention in the prior-box frame, self-attention, FFN; pre-LN residuals; box
encodings of the priors added to the attention inputs), then the classification
network (K classes + no-object, scores use the K class outputs) and the box network
(Faster R-CNN deltas w.r.t. the prior, no normalisation, ``exp`` clamped at 62.5).
Stage-2 targets by static top-k matching (k = 15; per gt its top-15 anchors over
all anchors, kept when selected; conflicts to the best rank; unmatched =
no-object), or ``absolute`` / ``hungarian`` / ``hungarian_ingraph`` (table 4.5).

Losses (thesis 4.4.1, 4.5.2; released code, author notes §2):
  selection  sigmoid focal over all in-image anchors.
  cls        'focal' (V1): sigmoid focal on the K+1 outputs, one-hot targets, the
             no-object column is the target of unmatched queries (released code);
             'qfl' (V2): quality focal loss (β 2, weight 0.5) with soft label
             IoU(pred box (no gradient), gt box) on the gt class.
  box        'l1' on deltas (V1) | 'giou' | 'diou' | 'ciou' (weight 1.3) | 'eiou'
             (mmdet EIoU, weight 1.85) on decoded boxes; positives only.
  box score  (V2) L1 between a logit and inverse_sigmoid(IoU(pred, gt), eps 1e-3),
             weight 0.2; detection score = class score × sigmoid(box score).
  Reduction ``loss_reduction``: 'sum' (released code: every loss summed over
  anchors/queries; we average the per-image sums over the images of the batch,
  which equals the author's per-GPU sum averaged by DDP when each GPU holds one
  image, as in the FQDet runs) | 'mean_per_gt' (sums divided by the number of real
  gt boxes in the batch, at least 1).

Crowd gt (COCO ``iscrowd``) never matches; anchors/queries lying for more than 70 %
inside a crowd box (intersection over prior area) are ignored when not positive.
Anchors centred in the padding are never selected, excluded from the selection
loss and from every gt's top-k candidate list (their IoU is taken as -1).

Inference (fixed shapes): 'old' — one label per query (the best class), the
``nms_candidates`` best queries, class-aware NMS, ``max_detections`` kept; 'new'
(thesis 4.4.3 and the released code) — every (query, class) pair scored, the
``nms_candidates`` best pairs through class-aware NMS, ``max_detections`` kept.
Boxes are clipped to the image and dropped when empty.

Ablation switches (all in the ``model.head`` config section, see
:func:`default_fqdet_config`): ``aux_losses``/``aux_shared`` (table 4.3),
``iterative_refinement`` (table 4.4; priors of layer i+1 = boxes of layer i, no
gradient, as Deformable DETR), ``matching`` (4.5), anchor sizes/ratios (4.2, 4.10),
``num_points`` (4.6), ``num_queries`` (4.11), ``ffn_dim`` (4.12), ``cls_net``
(4.13), ``cls_loss`` (4.14), ``box_net`` (4.15), ``box_loss`` (4.16),
``box_scoring`` (4.17), ``nms_iou`` (4.18), ``duplicate_removal`` (4.19:
'nms' | 'learned' | 'soft_learned' | 'learn_nms').
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from msvision.models.heads.fqdet_parts import (
    BoxEncoder,
    DecoderLayer,
    DuplicateNet,
    PredictionHeads,
    Selector,
    TransitionNetworks,
)
from msvision.ops import anchors as anchor_ops
from msvision.ops import losses as loss_ops
from msvision.ops.boxes import (
    box_cxcywh_to_xyxy,
    box_ioa,
    box_iou,
    box_xyxy_to_cxcywh,
    clip_boxes,
    decode_box_deltas,
    elementwise_box_iou,
    encode_box_deltas,
)
from msvision.ops.matching import (
    absolute_iou_matching,
    crowd_ignore_mask,
    hungarian_matching,
    hungarian_matching_ingraph,
    topk_anchor_matching,
    topk_candidates_per_gt,
    topk_matching_from_candidates,
)
from msvision.ops.nms import batched_nms_padded
from msvision.ops.queries import detr_matching_cost, inverse_sigmoid, select_topk_queries, topk_class_pairs
from msvision.structures import Batch, Detections

Array = jax.Array

MATCHINGS = ("topk", "absolute", "hungarian", "hungarian_ingraph")
CLS_LOSSES = ("focal", "qfl")
BOX_LOSSES = ("l1", "giou", "diou", "ciou", "eiou")
# Thesis 4.5.2, table 4.16: weights making the IoU losses comparable to L1.
DEFAULT_BOX_LOSS_WEIGHTS = {"l1": 1.0, "giou": 1.3, "diou": 1.3, "ciou": 1.3, "eiou": 1.85}
INFERENCE = ("old", "new")
DUPLICATE_REMOVAL = ("nms", "learned", "soft_learned", "learn_nms")
REDUCTIONS = ("sum", "mean_per_gt")
BOX_SCALE_CLAMP = math.log(62.5)  # author's RcnnBoxCoder clamps exp(dw) at 62.5 = 1000/16


class FQDetHead(nnx.Module):
    """FQDet/FQDetV2 head over pyramid levels ``levels`` (see module docstring).

    Args:
      num_classes: K object classes (the classifier has K + 1 outputs).
      levels: pyramid levels (``neck.out_levels``), stride ``2**l``.
      channels: pyramid width D (also the query width).
      rngs, dtype: as every module. Remaining keywords: the config fields of
        :func:`default_fqdet_config`.
    """

    def __init__(
        self,
        num_classes: int,
        levels: Sequence[int] = (3, 4, 5, 6, 7),
        channels: int = 256,
        *,
        anchor_base_scale: float = 4.0,
        anchor_num_sizes: int = 3,
        anchor_aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_offset: float = 0.5,
        selector_hidden: int = 64,
        num_groups: int = 8,
        prior_prob: float = 0.01,
        sel_topk: int = 5,
        sel_loss_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        num_queries: int = 300,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        self_attn_heads: int = 8,
        ffn_dim: int = 1024,
        box_encoder: bool = True,
        box_encoding_self_attn: bool = True,
        matching: str = "topk",
        match_topk: int = 15,
        absolute_pos_iou: float = 0.7,
        absolute_neg_iou: float = 0.3,
        absolute_low_quality: bool = True,
        hungarian_weights: Sequence[float] = (2.0, 5.0, 2.0),
        cls_net: str = "v1",
        cls_loss: str = "focal",
        cls_loss_weight: float = 1.0,
        qfl_beta: float = 2.0,
        box_net: str = "v1",
        box_loss: str = "l1",
        box_loss_weight: Optional[float] = None,
        box_scoring: bool = False,
        box_score_loss_weight: float = 0.2,
        box_score_eps: float = 1e-3,
        aux_losses: bool = False,
        aux_shared: bool = True,
        iterative_refinement: bool = False,
        loss_reduction: str = "sum",
        crowd_ioa_threshold: float = 0.7,
        inference: str = "old",
        nms_iou: float = 0.5,
        nms_candidates: int = 1000,
        max_detections: int = 100,
        duplicate_removal: str = "nms",
        duplicate_loss_weight: float = 1.0,
        duplicate_threshold: float = 0.5,
        soft_duplicate_power: float = 2.0,
        box_scale_clamp: float = BOX_SCALE_CLAMP,
        msda_impl: str = "auto",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        for name, value, allowed in (
            ("matching", matching, MATCHINGS), ("cls_loss", cls_loss, CLS_LOSSES), ("box_loss", box_loss, BOX_LOSSES),
            ("inference", inference, INFERENCE), ("duplicate_removal", duplicate_removal, DUPLICATE_REMOVAL),
            ("loss_reduction", loss_reduction, REDUCTIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if iterative_refinement and not aux_losses:
            raise ValueError("iterative_refinement needs aux_losses=True (intermediate boxes, thesis table 4.4)")
        self.num_classes = num_classes
        self.levels = tuple(sorted(levels))
        self.channels = channels
        self.anchor_sizes = {
            l: anchor_ops.retinanet_anchor_sizes(l, anchor_base_scale, anchor_num_sizes) for l in self.levels
        }
        self.anchor_aspect_ratios = tuple(float(r) for r in anchor_aspect_ratios)
        self.anchor_offset = anchor_offset
        self.num_anchor_types = anchor_num_sizes * len(self.anchor_aspect_ratios)
        self.sel_topk = sel_topk
        self.sel_loss_weight = sel_loss_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.box_encoding_self_attn = box_encoding_self_attn
        self.matching = matching
        self.match_topk = match_topk
        self.absolute_pos_iou = absolute_pos_iou
        self.absolute_neg_iou = absolute_neg_iou
        self.absolute_low_quality = absolute_low_quality
        self.hungarian_weights = tuple(float(w) for w in hungarian_weights)
        self.cls_loss = cls_loss
        self.cls_loss_weight = cls_loss_weight
        self.qfl_beta = qfl_beta
        self.box_loss = box_loss
        self.box_loss_weight = DEFAULT_BOX_LOSS_WEIGHTS[box_loss] if box_loss_weight is None else box_loss_weight
        self.box_scoring = box_scoring
        self.box_score_loss_weight = box_score_loss_weight
        self.box_score_eps = box_score_eps
        self.aux_losses = aux_losses
        self.iterative_refinement = iterative_refinement
        self.loss_reduction = loss_reduction
        self.crowd_ioa_threshold = crowd_ioa_threshold
        self.inference = inference
        self.nms_iou = nms_iou
        self.nms_candidates = nms_candidates
        self.max_detections = max_detections
        self.duplicate_removal = duplicate_removal
        self.duplicate_loss_weight = duplicate_loss_weight
        self.duplicate_threshold = duplicate_threshold
        self.soft_duplicate_power = soft_duplicate_power
        self.box_scale_clamp = box_scale_clamp

        kw = dict(dtype=dtype, rngs=rngs)
        self.selector = Selector(
            channels, self.num_anchor_types, hidden_channels=selector_hidden, num_groups=num_groups,
            prior_prob=prior_prob, **kw,
        )
        self.transition = TransitionNetworks(self.num_anchor_types, channels, channels, **kw)
        self.box_encoder = BoxEncoder(channels, **kw) if box_encoder else None
        self.layers = nnx.List([
            DecoderLayer(
                channels, num_levels=len(self.levels), num_heads=num_heads, num_points=num_points,
                self_attn_heads=self_attn_heads, ffn_dim=ffn_dim, msda_impl=msda_impl, **kw,
            )
            for _ in range(num_layers)
        ])
        num_heads_sets = num_layers if (aux_losses and not aux_shared) else 1
        self.heads = nnx.List([
            PredictionHeads(
                channels, num_classes + 1, cls_version=cls_net, box_version=box_net, box_scoring=box_scoring, **kw
            )
            for _ in range(num_heads_sets)
        ])
        self.duplicate_net = DuplicateNet(channels, **kw) if duplicate_removal != "nms" else None

    # --- anchors -----------------------------------------------------------------------

    def anchor_tables(self, pyramid: dict[int, Array]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Trace-time constants for the padded pyramid.

        Returns:
          anchors ``[N, 4]`` float32 pixels (level, row-major location, cell anchor),
          types ``[N]`` int32 cell-anchor index (size-major, ratio-minor),
          feature_ids ``[N]`` int32 index into the level-major flattened pyramid.
        """
        hws = {l: tuple(pyramid[l].shape[1:3]) for l in self.levels}
        anchors = anchor_ops.pyramid_anchors(hws, self.anchor_sizes, self.anchor_aspect_ratios,
                                             offset=self.anchor_offset)
        n = anchors.shape[0]
        ids = np.arange(n, dtype=np.int32)
        return anchors, ids % self.num_anchor_types, ids // self.num_anchor_types

    @staticmethod
    def anchors_in_image(anchors: Array, image_sizes: Array) -> Array:
        """``[B, N]`` bool: anchor centre inside the image (not in the batch padding)."""
        anchors = jnp.asarray(anchors)
        centres = 0.5 * (anchors[:, :2] + anchors[:, 2:])
        sizes = jnp.asarray(image_sizes, jnp.float32)  # (h, w)
        return (centres[None, :, 0] < sizes[:, None, 1]) & (centres[None, :, 1] < sizes[:, None, 0])

    # --- network -----------------------------------------------------------------------

    def selection_logits(self, pyramid: dict[int, Array]) -> Array:
        """``[B, N]`` float32 selector logits, N = Σ_l H_l·W_l·A."""
        out = []
        for level in self.levels:
            logits = self.selector(pyramid[level])
            out.append(logits.reshape(logits.shape[0], -1))
        return jnp.concatenate(out, axis=1)

    def __call__(self, pyramid: dict[int, Array], batch: Batch) -> dict[str, Any]:
        """Both stages.

        Returns a dict with ``sel_logits [B, N]``, ``anchor_valid [B, N]``,
        ``anchors [N, 4]`` (numpy), ``query_ids [B, Q]`` (selected anchor indices),
        ``outputs`` — one dict per supervised decoder layer (the last only unless
        ``aux_losses``) with ``cls [B, Q, K+1]``, ``deltas [B, Q, 4]``, ``boxes
        [B, Q, 4]`` (pixels), ``box_score [B, Q]`` or None, ``priors [B, Q, 4]`` —
        and ``queries [B, Q, D]`` after the last layer.
        """
        anchors, types, feature_ids = self.anchor_tables(pyramid)
        sel_logits = self.selection_logits(pyramid)
        anchor_valid = self.anchors_in_image(anchors, batch.image_sizes)
        query_ids, _ = select_topk_queries(jax.lax.stop_gradient(sel_logits), anchor_valid, self.num_queries)

        b = sel_logits.shape[0]
        spatial_shapes = tuple(tuple(int(s) for s in pyramid[l].shape[1:3]) for l in self.levels)
        value = jnp.concatenate([pyramid[l].reshape(b, -1, pyramid[l].shape[-1]) for l in self.levels], axis=1)
        feats = jnp.take_along_axis(value, jnp.asarray(feature_ids)[query_ids][..., None], axis=1)
        q = self.transition(feats, jnp.asarray(types)[query_ids])
        priors = jnp.asarray(anchors)[query_ids]  # [B, Q, 4] pixels

        img_h, img_w = (int(s) for s in batch.images.shape[1:3])
        input_scale = jnp.asarray([img_w, img_h, img_w, img_h], jnp.float32)
        # Per-level normalisation: location x on level l maps to x / (W_l · 2^l), exact
        # for the grid_sample convention even when the input is not a multiple of 2^l.
        level_scale = jnp.asarray(
            [[w * 2**l, h * 2**l, w * 2**l, h * 2**l] for l, (h, w) in zip(self.levels, spatial_shapes)],
            jnp.float32,
        )  # [L, 4]

        outputs = []
        for i, layer in enumerate(self.layers):
            cxcywh = box_xyxy_to_cxcywh(priors)
            reference = cxcywh[:, :, None, :] / level_scale[None, None]
            enc = self.box_encoder(cxcywh / input_scale) if self.box_encoder is not None else None
            q = layer(q, value, spatial_shapes, reference, cross_encoding=enc,
                      self_encoding=enc if self.box_encoding_self_attn else None)
            if self.aux_losses or i == self.num_layers - 1:
                heads = self.heads[i if len(self.heads) > 1 else 0]
                cls, deltas, score = heads(q)
                boxes = decode_box_deltas(deltas, priors, clamp=self.box_scale_clamp)
                outputs.append(dict(cls=cls, deltas=deltas, boxes=boxes, box_score=score, priors=priors))
                if self.iterative_refinement:
                    new = jax.lax.stop_gradient(box_xyxy_to_cxcywh(boxes))
                    new = new.at[..., 2:].set(jnp.maximum(new[..., 2:], 1.0))  # keep a usable frame
                    priors = box_cxcywh_to_xyxy(new)
        return dict(sel_logits=sel_logits, anchor_valid=anchor_valid, anchors=anchors, query_ids=query_ids,
                    outputs=outputs, queries=q)

    # --- targets -----------------------------------------------------------------------

    def selection_targets(self, anchors: np.ndarray, anchor_valid: Array, batch: Batch):
        """Stage-1 top-k targets and the per-gt stage-2 candidate lists (static top-k).

        Returns:
          sel_positive ``[B, N]`` bool, sel_ignore ``[B, N]`` bool (crowd regions),
          candidates ``[B, M, k2]`` int32 anchor ids, candidate_valid ``[B, M, k2]``.
        """
        anchors_j = jnp.asarray(anchors)
        gt_boxes = jnp.asarray(batch.boxes, jnp.float32)

        def one(boxes, valid, crowd, in_image):
            iou = jnp.where(in_image[:, None], box_iou(anchors_j, boxes), -1.0)
            _, positive = topk_anchor_matching(iou, valid, self.sel_topk, gt_is_crowd=crowd)
            ignore = crowd_ignore_mask(box_ioa(anchors_j, boxes), valid, crowd, self.crowd_ioa_threshold)
            cands, _, cand_valid = topk_candidates_per_gt(iou, valid, self.match_topk, gt_is_crowd=crowd)
            return positive, ignore & ~positive, cands, cand_valid

        return jax.vmap(one)(gt_boxes, jnp.asarray(batch.valid), jnp.asarray(batch.is_crowd), anchor_valid)

    def query_targets(self, out: dict, query_ids: Array, candidates, candidate_valid, batch: Batch):
        """Stage-2 matching of one supervised output.

        Returns ``matched [B, Q]`` int32 gt slot, ``positive [B, Q]``, ``ignore [B, Q]``.
        """
        gt_boxes = jnp.asarray(batch.boxes, jnp.float32)
        valid, crowd = jnp.asarray(batch.valid), jnp.asarray(batch.is_crowd)
        priors = out["priors"]

        def crowd_ignore(p, boxes, v, c):
            return crowd_ignore_mask(box_ioa(p, boxes), v, c, self.crowd_ioa_threshold)

        ignore = jax.vmap(crowd_ignore)(priors, gt_boxes, valid, crowd)
        if self.matching == "topk":

            def one(cands, cvalid, qids, p, boxes):
                return topk_matching_from_candidates(cands, cvalid, qids, box_iou(p, boxes))

            matched, positive = jax.vmap(one)(candidates, candidate_valid, query_ids, priors, gt_boxes)
        elif self.matching == "absolute":

            def one(p, boxes, v, c):
                return absolute_iou_matching(
                    box_iou(p, boxes), v, pos_iou=self.absolute_pos_iou, neg_iou=self.absolute_neg_iou,
                    allow_low_quality=self.absolute_low_quality, gt_is_crowd=c,
                    crowd_ioa=box_ioa(p, boxes), crowd_ioa_threshold=self.crowd_ioa_threshold,
                )

            matched, label = jax.vmap(one)(priors, gt_boxes, valid, crowd)
            positive = label == 1
            ignore = ignore | (label < 0)
        else:
            wc, wl, wg = self.hungarian_weights
            sizes = jnp.asarray(batch.image_sizes, jnp.float32)
            real = valid & ~crowd
            solver = hungarian_matching if self.matching == "hungarian" else hungarian_matching_ingraph

            def one(cls, boxes, gt, labels, hw, r):
                cost = detr_matching_cost(cls[:, : self.num_classes], boxes, gt, labels, hw,
                                          class_weight=wc, l1_weight=wl, giou_weight=wg)
                return solver(cost, r)

            matched, positive = jax.vmap(one)(
                jax.lax.stop_gradient(out["cls"]), jax.lax.stop_gradient(out["boxes"]), gt_boxes,
                jnp.asarray(batch.labels), sizes, real,
            )
        return matched, positive, ignore & ~positive

    # --- losses ------------------------------------------------------------------------

    def _reduce(self, per_image_sums: Array, num_gt: Array) -> Array:
        if self.loss_reduction == "sum":
            return jnp.mean(per_image_sums)
        return jnp.sum(per_image_sums) / jnp.maximum(num_gt, 1.0)

    def output_losses(self, out: dict, matched: Array, positive: Array, ignore: Array, batch: Batch, num_gt):
        """Classification, box and box-score losses of one output (reduced scalars)."""
        k = self.num_classes
        gt_boxes = jnp.take_along_axis(jnp.asarray(batch.boxes, jnp.float32), matched[..., None], axis=1)
        gt_labels = jnp.take_along_axis(jnp.asarray(batch.labels), matched, axis=1)
        gt_boxes = jnp.where(positive[..., None], gt_boxes, out["priors"])  # never degenerate
        pred_iou = elementwise_box_iou(jax.lax.stop_gradient(out["boxes"]), gt_boxes)  # [B, Q]

        onehot = jax.nn.one_hot(jnp.where(positive, gt_labels, k), k + 1, dtype=jnp.float32)
        if self.cls_loss == "focal":
            cls = loss_ops.sigmoid_focal_loss(out["cls"], onehot, self.focal_alpha, self.focal_gamma)
        else:
            soft = onehot * jnp.where(positive, pred_iou, 1.0)[..., None]
            cls = loss_ops.quality_focal_loss(out["cls"], soft, self.qfl_beta)
        cls = jnp.where(ignore, 0.0, cls.sum(-1))

        if self.box_loss == "l1":
            target = encode_box_deltas(gt_boxes, out["priors"])
            box = loss_ops.l1_loss(out["deltas"], target).sum(-1)
        else:
            fn = {"giou": loss_ops.giou_loss, "diou": loss_ops.diou_loss, "ciou": loss_ops.ciou_loss,
                  "eiou": loss_ops.eiou_loss}[self.box_loss]
            box = fn(out["boxes"], gt_boxes)
        box = jnp.where(positive, box, 0.0)

        losses = {
            "loss_cls": self.cls_loss_weight * self._reduce(cls.sum(-1), num_gt),
            "loss_box": self.box_loss_weight * self._reduce(box.sum(-1), num_gt),
        }
        if out["box_score"] is not None:
            target = inverse_sigmoid(pred_iou, self.box_score_eps)
            score = jnp.where(positive, jnp.abs(out["box_score"] - target), 0.0)
            losses["loss_box_score"] = self.box_score_loss_weight * self._reduce(score.sum(-1), num_gt)
        return losses

    def losses(self, pyramid: dict[int, Array], batch: Batch) -> tuple[Array, dict[str, Array]]:
        """Selection + stage-2 losses (summed over supervised layers). fp32."""
        res = self(pyramid, batch)
        num_gt = jnp.sum(jnp.asarray(batch.valid) & ~jnp.asarray(batch.is_crowd)).astype(jnp.float32)

        sel_pos, sel_ignore, cands, cand_valid = self.selection_targets(res["anchors"], res["anchor_valid"], batch)
        sel = loss_ops.sigmoid_focal_loss(res["sel_logits"], sel_pos.astype(jnp.float32), self.focal_alpha,
                                          self.focal_gamma)
        sel = jnp.where(res["anchor_valid"] & ~sel_ignore, sel, 0.0)
        metrics = {"loss_sel": self.sel_loss_weight * self._reduce(sel.sum(-1), num_gt)}

        matched = positive = None
        for i, out in enumerate(res["outputs"]):
            matched, positive, ignore = self.query_targets(out, res["query_ids"], cands, cand_valid, batch)
            layer_losses = self.output_losses(out, matched, positive, ignore, batch, num_gt)
            for name, value in layer_losses.items():
                metrics[name] = metrics.get(name, 0.0) + value

        if self.duplicate_net is not None:
            # Thesis 4.5.2: pairs matching the same gt are duplicates, pairs matching
            # different gts are not; cross-entropy, weight 1.
            logits = self.duplicate_net(res["queries"])
            same = (matched[:, :, None] == matched[:, None, :]).astype(jnp.float32)
            q = positive.shape[1]
            pair = positive[:, :, None] & positive[:, None, :] & ~jnp.eye(q, dtype=bool)[None]
            bce = jnp.maximum(logits, 0) - logits * same + jnp.log1p(jnp.exp(-jnp.abs(logits)))
            dup = jnp.where(pair, bce, 0.0).sum((1, 2))
            metrics["loss_dup"] = self.duplicate_loss_weight * self._reduce(dup, num_gt)

        total = sum(v for k, v in metrics.items() if k.startswith("loss_"))
        metrics["num_pos_queries"] = jnp.sum(positive) / positive.shape[0]
        metrics["num_pos_anchors"] = jnp.sum(sel_pos) / sel_pos.shape[0]
        return total, metrics

    # --- inference ---------------------------------------------------------------------

    def predict(self, pyramid: dict[int, Array], batch: Batch) -> Detections:
        """Detections in padded-input pixels, ``max_detections`` per image."""
        res = self(pyramid, batch)
        out = res["outputs"][-1]
        k = self.num_classes
        scores = jax.nn.sigmoid(out["cls"][..., :k])  # [B, Q, K]
        if out["box_score"] is not None:
            scores = scores * jax.nn.sigmoid(out["box_score"])[..., None]
        sizes = jnp.asarray(batch.image_sizes, jnp.float32)
        boxes = clip_boxes(out["boxes"], sizes[:, None, :])
        box_ok = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        scores = jnp.where(box_ok[..., None], scores, -1.0)

        if self.inference == "new":
            query_ids, labels, cand_scores = topk_class_pairs(scores, self.nms_candidates)
        else:
            best = jnp.max(scores, axis=-1)
            cand_scores, query_ids = jax.lax.top_k(best, min(self.nms_candidates, best.shape[1]))
            labels = jnp.take_along_axis(jnp.argmax(scores, axis=-1), query_ids, axis=1).astype(jnp.int32)
        cand_valid = cand_scores >= 0
        cand_boxes = jnp.take_along_axis(boxes, query_ids[..., None], axis=1)

        use_nms = self.duplicate_removal in ("nms", "learn_nms")
        if not use_nms:
            cand_scores, cand_valid = self._learned_duplicate_removal(
                res["queries"], query_ids, labels, cand_scores, cand_valid
            )

        def select_one(b, s, l, v):
            if use_nms:
                return batched_nms_padded(b, s, l, self.nms_iou, self.max_detections, valid=v)
            m = min(self.max_detections, s.shape[0])
            top, idx = jax.lax.top_k(jnp.where(v, s, -1.0), m)
            keep_valid = top >= 0
            if m < self.max_detections:
                idx = jnp.pad(idx, (0, self.max_detections - m))
                keep_valid = jnp.pad(keep_valid, (0, self.max_detections - m))
            return idx.astype(jnp.int32), keep_valid

        keep, keep_valid = jax.vmap(select_one)(cand_boxes, cand_scores, labels, cand_valid)
        take = lambda x: jnp.take_along_axis(x, keep if x.ndim == 2 else keep[..., None], axis=1)  # noqa: E731
        return Detections(
            boxes=jnp.where(keep_valid[..., None], take(cand_boxes), 0.0),
            scores=jnp.where(keep_valid, take(cand_scores), 0.0),
            labels=jnp.where(keep_valid, take(labels), 0),
            valid=keep_valid,
        )

    def _learned_duplicate_removal(self, queries, query_ids, labels, scores, valid):
        """Learned / Soft-Learned duplicate removal on the candidate list (thesis 4.5.2).

        Duplicate probabilities ``d`` of candidate pairs with the same label. 'learned':
        drop a candidate when a higher-scoring valid candidate is its duplicate with
        ``d > duplicate_threshold``. 'soft_learned': multiply its score by
        ``Π (1 - d)^α`` over the higher-scoring valid candidates (α 2), a one-pass
        version of the thesis's sequential loop.
        """
        dup = jax.nn.sigmoid(self.duplicate_net(queries))  # [B, Q, Q]
        d = jax.vmap(lambda m, i: m[i][:, i])(dup, query_ids)  # [B, C, C]
        c = scores.shape[1]
        order = jnp.arange(c)
        higher = (scores[:, None, :] > scores[:, :, None]) | (
            (scores[:, None, :] == scores[:, :, None]) & (order[None, None, :] < order[None, :, None])
        )  # [B, a, b]: b ranks above a
        pair = higher & (labels[:, :, None] == labels[:, None, :]) & valid[:, None, :]
        if self.duplicate_removal == "learned":
            drop = jnp.any(pair & (d > self.duplicate_threshold), axis=-1)
            return scores, valid & ~drop
        factor = jnp.prod(jnp.where(pair, (1.0 - d) ** self.soft_duplicate_power, 1.0), axis=-1)
        return jnp.where(valid, scores * factor, scores), valid


# --- config and builder -------------------------------------------------------------------


def default_fqdet_config(version: str = "v1") -> ml_collections.ConfigDict:
    """The ``model.head`` section of FQDet ('v1', thesis table 4.1 base head) or
    FQDetV2 ('v2', table 4.20, the released ``sel_v291``).

    Provenance of the defaults (T = thesis text, C = released code, both = agree):
      anchors 3 sizes 4·2^(l+j/3) (C; T: "as RetinaNet"), ratios (0.5, 1, 2) / 7 ratios
      1/8…8 (both), centre offset 0.5 (C); selector + focal + top-5 (both);
      num_queries 300 / 1500 (both); 6 layers, 8 heads, num_points 4 / 1 (both; the
      released FQDet config sel_v9 already uses 1 point = the improved head);
      ffn_dim 1024 / 2048 (both); box_encoder True / False (T says the box encodings
      are added to the cross- and self-attention inputs; C: FQDet adds them to the
      MSDA input, FQDetV2 has no box encoder at all); box_encoding_self_attn True (T);
      matching 'topk' k=15 (both); cls_net v1/v2, cls_loss focal/qfl (weight 1/0.5),
      box_net v1/v2, box_loss l1/eiou (weight 1/1.85), box_scoring False/True, eps 1e-3
      (both); aux_losses False, iterative_refinement False (both: the released head
      applies the heads after the last layer only); loss_reduction 'sum' (C; T is
      silent); inference 'old' / 'new' (T: the base FQDet uses the old strategy, the
      improved one and FQDetV2 the new; C always 'new'); nms_iou 0.5 / 0.65 (T: 0.65 in
      the small-scale design runs, 0.70 in the main runs; C sel_v291: 0.65);
      nms_candidates 1000, max_detections 100 (C).
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    cfg = dict(
        name="fqdet",
        anchor_base_scale=4.0, anchor_num_sizes=3, anchor_aspect_ratios=(0.5, 1.0, 2.0), anchor_offset=0.5,
        selector_hidden=64, num_groups=8, prior_prob=0.01, sel_topk=5, sel_loss_weight=1.0,
        focal_alpha=0.25, focal_gamma=2.0,
        num_queries=300, num_layers=6, num_heads=8, num_points=4, self_attn_heads=8, ffn_dim=1024,
        box_encoder=True, box_encoding_self_attn=True,
        matching="topk", match_topk=15, absolute_pos_iou=0.7, absolute_neg_iou=0.3, absolute_low_quality=True,
        hungarian_weights=(2.0, 5.0, 2.0),
        cls_net="v1", cls_loss="focal", cls_loss_weight=1.0, qfl_beta=2.0,
        box_net="v1", box_loss="l1", box_loss_weight=1.0,
        box_scoring=False, box_score_loss_weight=0.2, box_score_eps=1e-3,
        aux_losses=False, aux_shared=True, iterative_refinement=False,
        loss_reduction="sum", crowd_ioa_threshold=0.7,
        inference="old", nms_iou=0.5, nms_candidates=1000, max_detections=100,
        duplicate_removal="nms", duplicate_loss_weight=1.0, duplicate_threshold=0.5, soft_duplicate_power=2.0,
        box_scale_clamp=BOX_SCALE_CLAMP, msda_impl="auto",
    )
    if version == "v2":
        cfg.update(
            anchor_aspect_ratios=(0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0), num_queries=1500, num_points=1,
            ffn_dim=2048, box_encoder=False, cls_net="v2", cls_loss="qfl", cls_loss_weight=0.5,
            box_net="v2", box_loss="eiou", box_loss_weight=1.85, box_scoring=True, inference="new", nms_iou=0.65,
        )
    return ml_collections.ConfigDict(cfg)


_BUILDER_FIELDS = tuple(k for k in default_fqdet_config().keys() if k != "name")


def build_fqdet_head(head_cfg: Any, *, num_classes: int, levels: Sequence[int], channels: int,
                     rngs: nnx.Rngs, dtype=None) -> FQDetHead:
    """``model.head`` (name 'fqdet') → :class:`FQDetHead`; missing fields take the
    defaults of :func:`default_fqdet_config` ('v1')."""
    defaults = default_fqdet_config("v1")
    get = (lambda key: head_cfg.get(key, defaults[key])) if hasattr(head_cfg, "get") else (
        lambda key: getattr(head_cfg, key, defaults[key]))
    kwargs = {key: get(key) for key in _BUILDER_FIELDS}
    unknown = set(head_cfg.keys()) - set(_BUILDER_FIELDS) - {"name"} if hasattr(head_cfg, "keys") else set()
    if unknown:
        raise ValueError(f"unknown FQDet head config fields {sorted(unknown)}")
    for key in ("anchor_aspect_ratios", "hungarian_weights"):
        kwargs[key] = tuple(kwargs[key])
    return FQDetHead(num_classes, tuple(levels), channels, dtype=dtype, rngs=rngs, **kwargs)
