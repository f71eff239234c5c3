"""The FQDet / FQDetV2 head network (thesis chapter 4, figure 4.1).

Stage 1 (thesis 4.3.3): anchors of ``anchors.num_sizes`` sizes × ratios on every
neck feature (:class:`~msvision.ops.anchors.AnchorSpec`; sizes ``4·2^(l+j/3)``,
centres ``stride·(x + 0.5)``, as DetSeg's ``AnchorGenerator``); the selector network scores every
feature–anchor pair; the ``selector.num_queries`` best pairs per image become the
queries, their anchors the box priors. Only anchors of feature cells inside the
image's valid map (``ceil(h / 2^l)`` × ``ceil(w / 2^l)`` cells, what the thesis's
batch-1 network has) can be selected, so an image's queries do not depend on the
padding of its batch.

Stage 2: per-anchor-type transition networks, ``decoder.num_layers`` decoder
layers (MSDA cross-attention in the prior-box frame, self-attention, FFN; pre-LN
residuals; box encodings of the priors added to the attention inputs), then the
classification network (K classes + no-object) and the box network (Faster R-CNN
deltas w.r.t. the prior, no normalisation, ``exp`` clamped at 62.5).

The other concerns live beside it, DETR style: :mod:`.matcher` (targets),
:mod:`.criterion` (losses), :mod:`.postprocess` (detections); :mod:`.modules`
holds the networks. ``FQDetHead.losses`` and ``FQDetHead.predict`` only wire
them together.

Config (``model.head``, name 'fqdet'): one nested section per constructor
argument below; ``python -m msvision.models.build --kind head --name fqdet``
prints every field with its default. Defaults follow the thesis's base FQDet
(table 4.1) and the released FQDet config (DetSeg
``scripts/fqdet/r50_fpn_fqdet_12e.sh``) where the thesis is silent; the FQDetV2 configs
state their differences. Ablation switches: ``prediction.aux_losses``
/ ``aux_shared`` (table 4.3), ``decoder.iterative_refinement`` (4.4),
``matcher.matching`` (4.5), ``anchors`` (4.2, 4.10), ``decoder.num_points`` (4.6),
``selector.num_queries`` (4.11), ``decoder.ffn_dim`` (4.12), ``prediction.cls_net``
(4.13), ``loss.cls`` (4.14), ``prediction.box_net`` (4.15), ``loss.box`` (4.16),
``prediction.box_scoring`` (4.17), ``inference.nms_iou`` (4.18),
``inference.duplicate_removal`` (4.19).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msvision.models.heads.fqdet.criterion import FQDetCriterion
from msvision.models.heads.fqdet.matcher import FQDetMatcher
from msvision.models.heads.fqdet.modules import (
    BOX_NETS,
    CLS_NETS,
    BoxEncoder,
    DecoderLayer,
    DuplicateNet,
    PredictionHeads,
    Selector,
    TransitionNetworks,
)
from msvision.models.heads.fqdet.postprocess import FQDetPostProcess
from msvision.ops.anchors import AnchorSpec, anchor_cells, anchors_in_valid_map
from msvision.ops.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, decode_box_deltas, elementwise_box_iou
from msvision.ops.padding import mask_padding
from msvision.ops.queries import select_topk_queries
from msvision.structures import Batch, Detections, ImageBatch, QueryOutputs

Array = jax.Array

BOX_SCALE_CLAMP = math.log(62.5)  # the author's RcnnBoxCoder clamps exp(dw) at 62.5 = 1000/16


@dataclasses.dataclass(frozen=True)
class SelectorSpec:
    """Stage 1 (config ``model.head.selector``): selector network and query count.

    ``hidden_channels`` (64) and ``num_groups`` (8): the bottleneck and GroupNorm of
    the selector (thesis 4.4.1); ``prior_prob``: bias init of its logits (0.01);
    ``num_queries``: selected feature–anchor pairs per image (300; FQDetV2 1500).
    """

    hidden_channels: int = 64
    num_groups: int = 8
    prior_prob: float = 0.01
    num_queries: int = 300


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """Stage 2 decoder (config ``model.head.decoder``; thesis 4.4.1).

    ``box_encoder``: add box encodings of the priors to the cross-attention input
    (thesis: and to the self-attention queries/keys, ``box_encoding_self_attn``;
    the released FQDetV2 has no box encoder). ``iterative_refinement``
    (table 4.4): the priors of layer i+1 are the boxes of layer i (no gradient,
    Deformable DETR); needs ``prediction.aux_losses``. ``msda_impl``: see
    :func:`msvision.ops.msda.multiscale_deformable_attention`.
    """

    num_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    self_attn_heads: int = 8
    ffn_dim: int = 1024
    box_encoder: bool = True
    box_encoding_self_attn: bool = True
    iterative_refinement: bool = False
    msda_impl: str = "auto"


@dataclasses.dataclass(frozen=True)
class PredictionSpec:
    """Prediction networks (config ``model.head.prediction``).

    ``cls_net`` (table 4.13): 'mlp', the base FQDet's classification network (thesis
    4.4.1), or 'linear', one linear layer: the thesis's FQDetV2 classification network.
    ``box_net`` (table 4.15): 'mlp', the base FQDet's box network, or 'linear_norm_mlp'
    (Linear → LayerNorm → two ReLU hidden layers → Linear): the thesis's FQDetV2 box
    network. ``mlp_hidden_layers``: hidden layers of the 'mlp' networks (1 in thesis 4.4.1,
    2 in the released FQDet config). ``box_scoring`` (table 4.17); ``aux_losses``:
    predictions and losses on the queries entering the decoder and after every decoder
    layer (table 4.3), with one shared prediction-network set (``aux_shared``) or one per
    supervised output; ``box_scale_clamp``: clamp of the decoded log-scale.
    """

    cls_net: str = "mlp"
    box_net: str = "mlp"
    mlp_hidden_layers: int = 1
    box_scoring: bool = False
    aux_losses: bool = False
    aux_shared: bool = True
    box_scale_clamp: float = BOX_SCALE_CLAMP

    def __post_init__(self):
        if self.cls_net not in CLS_NETS:
            raise ValueError(f"prediction.cls_net must be one of {CLS_NETS}, got {self.cls_net!r}")
        if self.box_net not in BOX_NETS:
            raise ValueError(f"prediction.box_net must be one of {BOX_NETS}, got {self.box_net!r}")


class FQDetHead(nnx.Module):
    """FQDet/FQDetV2 head over pyramid levels ``levels`` (see the module docstring).

    Args:
      num_classes: K object classes (the classifier has K + 1 outputs).
      levels: pyramid levels (``neck.out_levels``), stride ``2**l``.
      channels: pyramid width D (also the query width).
      anchors, selector, decoder, prediction: the network
        (:class:`~msvision.ops.anchors.AnchorSpec`, :class:`SelectorSpec`,
        :class:`DecoderSpec`, :class:`PredictionSpec`).
      matcher, loss, inference: :class:`.FQDetMatcher`, :class:`.FQDetCriterion`,
        :class:`.FQDetPostProcess`.
    """

    provides_queries = True  # losses_with_queries / predict_with_queries feed a segmentation head

    def __init__(
        self,
        num_classes: int,
        levels: Sequence[int] = (3, 4, 5, 6, 7),
        channels: int = 256,
        *,
        anchors: AnchorSpec = AnchorSpec(),
        selector: SelectorSpec = SelectorSpec(),
        decoder: DecoderSpec = DecoderSpec(),
        prediction: PredictionSpec = PredictionSpec(),
        matcher: FQDetMatcher = FQDetMatcher(),
        loss: FQDetCriterion = FQDetCriterion(),
        inference: FQDetPostProcess = FQDetPostProcess(),
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if decoder.iterative_refinement and not prediction.aux_losses:
            raise ValueError("decoder.iterative_refinement needs prediction.aux_losses=True "
                             "(intermediate boxes, thesis table 4.4)")
        self.num_classes = num_classes
        self.levels = tuple(sorted(levels))
        self.channels = channels
        self.anchor_spec = anchors
        self.selector_spec = selector
        self.decoder_spec = decoder
        self.prediction_spec = prediction
        self.matcher = matcher
        self.criterion = loss
        self.postprocess = inference

        kw = dict(dtype=dtype, rngs=rngs)
        self.selector = Selector(channels, anchors.num_types, hidden_channels=selector.hidden_channels,
                                 num_groups=selector.num_groups, prior_prob=selector.prior_prob, **kw)
        self.transition = TransitionNetworks(anchors.num_types, channels, channels, **kw)
        self.box_encoder = BoxEncoder(channels, **kw) if decoder.box_encoder else None
        self.layers = nnx.List([
            DecoderLayer(
                channels, num_levels=len(self.levels), num_heads=decoder.num_heads, num_points=decoder.num_points,
                self_attn_heads=decoder.self_attn_heads, ffn_dim=decoder.ffn_dim, msda_impl=decoder.msda_impl, **kw,
            )
            for _ in range(decoder.num_layers)
        ])
        # Unshared auxiliary heads: one set for the decoder input and one per layer (7 for 6
        # layers: table 4.3's 43.5 M; one set per layer would give 43.35 M).
        num_head_sets = decoder.num_layers + 1 if (prediction.aux_losses and not prediction.aux_shared) else 1
        self.heads = nnx.List([
            PredictionHeads(channels, num_classes + 1, cls_net=prediction.cls_net, box_net=prediction.box_net,
                            box_scoring=prediction.box_scoring, mlp_hidden_layers=prediction.mlp_hidden_layers,
                            **kw)
            for _ in range(num_head_sets)
        ])
        self.duplicate_net = DuplicateNet(channels, **kw) if inference.learned_duplicates else None

    # --- anchors -----------------------------------------------------------------------

    def anchor_tables(self, pyramid: dict[int, Array]) -> dict[str, np.ndarray]:
        """Trace-time constants for the padded pyramid: ``anchors [N, 4]`` float32
        pixels, ``types [N]`` cell-anchor index (size-major, ratio-minor),
        ``feature_ids [N]`` index into the level-major flattened pyramid, ``cells
        [N, 2]`` and ``strides [N]`` (see :func:`anchors_in_valid_map`)."""
        hws = {l: tuple(pyramid[l].shape[1:3]) for l in self.levels}
        anchors = self.anchor_spec.pyramid(hws)
        ids = np.arange(anchors.shape[0], dtype=np.int32)
        a = self.anchor_spec.num_types
        cells, strides = anchor_cells(hws, a)
        return dict(anchors=anchors, types=ids % a, feature_ids=ids // a, cells=cells, strides=strides)

    # --- network -----------------------------------------------------------------------

    def selection_logits(self, pyramid: dict[int, Array], image_sizes: Array) -> Array:
        """``[B, N]`` float32 selector logits, N = Σ_l H_l·W_l·A."""
        out = []
        for level in self.levels:
            logits = self.selector(pyramid[level], image_sizes, 2**level)
            out.append(logits.reshape(logits.shape[0], -1))
        return jnp.concatenate(out, axis=1)

    def __call__(self, pyramid: dict[int, Array], batch: ImageBatch) -> dict[str, Any]:
        """Both stages.

        Returns a dict with ``sel_logits [B, N]``, ``anchor_valid [B, N]``,
        ``tables`` (:meth:`anchor_tables`), ``query_ids [B, Q]`` (selected anchor
        indices), ``outputs`` — one dict per supervised output (the last layer only
        unless ``aux_losses``: then the decoder input and every layer) with ``cls [B, Q, K+1]``, ``deltas [B, Q, 4]``,
        ``boxes [B, Q, 4]`` (pixels), ``box_score [B, Q]`` or None, ``priors [B, Q,
        4]`` — and ``queries [B, Q, D]`` after the last layer.
        """
        tables = self.anchor_tables(pyramid)
        image_sizes = jnp.asarray(batch.image_sizes, jnp.int32)
        sel_logits = self.selection_logits(pyramid, image_sizes)
        anchor_valid = anchors_in_valid_map(tables["cells"], tables["strides"], image_sizes)
        query_ids, _ = select_topk_queries(jax.lax.stop_gradient(sel_logits), anchor_valid,
                                           self.selector_spec.num_queries)

        b = sel_logits.shape[0]
        spatial_shapes = tuple(tuple(int(s) for s in pyramid[l].shape[1:3]) for l in self.levels)
        # MSDA samples bilinearly with zero padding outside the image (Deformable DETR's
        # ``MSDeformAttnFunction``, used by DetSeg's ``MSDAv1``): the padded cells of
        # the values must be zero, as they are for the image alone.
        value = jnp.concatenate([mask_padding(pyramid[l], image_sizes, 2**l).reshape(b, -1, pyramid[l].shape[-1])
                                 for l in self.levels], axis=1)
        feats = jnp.take_along_axis(value, jnp.asarray(tables["feature_ids"])[query_ids][..., None], axis=1)
        q = self.transition(feats, jnp.asarray(tables["types"])[query_ids])
        priors = jnp.asarray(tables["anchors"])[query_ids]  # [B, Q, 4] pixels

        # Box encodings normalise the prior by the image size (the author divides by
        # the padded batch size, which at batch-1 inference is the image size; the
        # image's own size keeps an image's queries independent of its batch).
        sizes_f = image_sizes.astype(jnp.float32)
        input_scale = jnp.stack([sizes_f[:, 1], sizes_f[:, 0], sizes_f[:, 1], sizes_f[:, 0]], -1)[:, None]  # [B,1,4]
        # Per-level normalisation: location x on level l maps to x / (W_l · 2^l), exact
        # for the grid_sample convention even when the input is not a multiple of 2^l.
        level_scale = jnp.asarray(
            [[w * 2**l, h * 2**l, w * 2**l, h * 2**l] for l, (h, w) in zip(self.levels, spatial_shapes)],
            jnp.float32,
        )  # [L, 4]

        outputs = []
        spec = self.prediction_spec

        def predict(i, q, priors):
            """Supervised output ``i`` (0: the decoder input, i: after layer i)."""
            heads = self.heads[i if len(self.heads) > 1 else 0]
            cls, deltas, score = heads(q)
            boxes = decode_box_deltas(deltas, priors, clamp=spec.box_scale_clamp)
            outputs.append(dict(cls=cls, deltas=deltas, boxes=boxes, box_score=score, priors=priors))
            if self.decoder_spec.iterative_refinement:
                new = jax.lax.stop_gradient(box_xyxy_to_cxcywh(boxes))
                new = new.at[..., 2:].set(jnp.maximum(new[..., 2:], 1.0))  # keep a usable frame
                return box_cxcywh_to_xyxy(new)
            return priors

        if spec.aux_losses:  # the queries entering the decoder are supervised too
            priors = predict(0, q, priors)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            cxcywh = box_xyxy_to_cxcywh(priors)
            reference = cxcywh[:, :, None, :] / level_scale[None, None]
            enc = self.box_encoder(cxcywh / input_scale) if self.box_encoder is not None else None
            q = layer(q, value, spatial_shapes, reference, cross_encoding=enc,
                      self_encoding=enc if self.decoder_spec.box_encoding_self_attn else None)
            if spec.aux_losses or i == last:
                priors = predict(i + 1 if spec.aux_losses else 0, q, priors)
        return dict(sel_logits=sel_logits, anchor_valid=anchor_valid, tables=tables, query_ids=query_ids,
                    outputs=outputs, queries=q)

    # --- training and inference ----------------------------------------------------------

    def losses(self, pyramid: dict[int, Array], batch: Batch) -> tuple[Array, dict[str, Array]]:
        """Selection + stage-2 losses (summed over supervised layers), float32."""
        total, metrics, _ = self.losses_with_queries(pyramid, batch)
        return total, metrics

    def losses_with_queries(self, pyramid: dict[int, Array],
                            batch: Batch) -> tuple[Array, dict[str, Array], QueryOutputs]:
        """:meth:`losses` plus what a segmentation head needs (thesis 5.3.3):
        the last layer's queries and predicted boxes (unclipped, pixels) and the stage-2
        matches of the last supervised output (a query has at most one gt, as DetSeg's ``TopMatcher``)."""
        res = self(pyramid, batch)
        num_gt = jnp.sum(jnp.asarray(batch.valid) & ~jnp.asarray(batch.is_crowd)).astype(jnp.float32)
        sel_pos, sel_ignore, cands, cand_valid = self.matcher.selection_targets(
            res["tables"]["anchors"], res["anchor_valid"], batch)
        metrics = {"loss_sel": self.criterion.selection_loss(res["sel_logits"], sel_pos, sel_ignore, num_gt)}

        matched = positive = None
        for out in res["outputs"]:
            matched, positive, ignore = self.matcher.query_targets(out, res["query_ids"], cands, cand_valid, batch,
                                                                   self.num_classes)
            layer_losses = self.criterion.output_losses(out, matched, positive, ignore, batch, self.num_classes,
                                                        num_gt)
            for name, value in layer_losses.items():
                metrics[name] = metrics.get(name, 0.0) + value
        if self.duplicate_net is not None:
            metrics["loss_dup"] = self.criterion.duplicate_loss(self.duplicate_net(res["queries"]), matched,
                                                                positive, num_gt)
        total = sum(v for k, v in metrics.items() if k.startswith("loss_"))
        metrics["num_pos_queries"] = jnp.sum(positive) / positive.shape[0]
        metrics["num_pos_anchors"] = jnp.sum(sel_pos) / sel_pos.shape[0]
        last = res["outputs"][-1]
        gt_boxes = jnp.take_along_axis(jnp.asarray(batch.boxes, jnp.float32), matched[..., None], axis=1)
        quality = jnp.where(positive, elementwise_box_iou(last["priors"], gt_boxes), 0.0)
        queries = QueryOutputs(queries=res["queries"], boxes=last["boxes"], matched=matched, positive=positive,
                               match_quality=quality)
        return total, metrics, queries

    def predict(self, pyramid: dict[int, Array], batch: ImageBatch) -> Detections:
        """Detections in padded-input pixels, ``inference.max_detections`` per image."""
        return self.predict_with_queries(pyramid, batch)[0]

    def predict_with_queries(self, pyramid: dict[int, Array], batch: ImageBatch) -> tuple[Detections, QueryOutputs]:
        """:meth:`predict` plus the queries, their unclipped boxes and the query of every
        detection (a segmentation head computes one mask per query, as the released EffSeg)."""
        res = self(pyramid, batch)
        dup = None
        if self.duplicate_net is not None and self.postprocess.duplicate_removal != "learn_nms":
            dup = self.duplicate_net(res["queries"])
        dets, det_queries = self.postprocess.select(res["outputs"][-1], batch.image_sizes, self.num_classes, dup)
        return dets, QueryOutputs(queries=res["queries"], boxes=res["outputs"][-1]["boxes"],
                                  detection_queries=det_queries)
