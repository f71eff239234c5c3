"""The thesis's RetinaNet head network (section 3.4.1).

"We follow the implementation and settings from Detectron2, except that the last
layer of the subnets has kernel size 1 (instead of 3) and that we normalize the
losses per feature map (instead of over the whole feature pyramid)."

Network (detectron2 ``RetinaNetHead``, no norm; config ``subnets``): class and box
subnets, each ``num_convs`` (C) hidden 3×3 convs (D→D, ReLU) shared over levels,
then a 1×1 conv to ``A·K`` logits / ``A·4`` deltas (``last_kernel_size=3``:
detectron2's and torchvision's 3×3 last layers). Init N(0, 0.01) weights, zero
bias; the class bias is ``-log((1 - π)/π)``, π = ``prior_prob`` = 0.01. The
subnets' convolutions see zeros outside the image's valid map, so an image's
outputs do not depend on its batch (:mod:`msvision.ops.padding`).

Anchors (config ``anchors``, :class:`~msvision.ops.anchors.AnchorSpec`): 3 sizes ×
3 aspect ratios per level, sizes ``4·2^l·2^(j/3)``, centres at ``stride·(x +
offset)`` with ``offset = 0`` as detectron2's ``DefaultAnchorGenerator`` (used by
the author's ``retina.py`` too).

The other concerns live beside it, as FQDet's: :mod:`.matcher` (anchor targets,
config ``matcher``), :mod:`.criterion` (focal and box losses and their per-level
normalisation, config ``loss``), :mod:`.postprocess` (detections, config
``inference``). ``RetinaNetHead.losses`` and ``RetinaNetHead.predict`` only wire
them together. The loss normaliser's EMA is a variable of the head
(``loss_normalizer``, a :class:`LossNormalizer`, updated by :meth:`RetinaNetHead.losses`);
the criterion computes with it. The train step must carry non-``Param`` state forward
for it to move (otherwise it stays near ``loss.normalizer_init``).

Config (``model.head``, name 'retinanet'): one nested section per constructor
argument below; ``python -m msvision.models.build --kind head --name retinanet``
prints every field with its default. Settings shared with FQDet have FQDet's names
and paths (``inference.nms_iou``, ``loss.box``, ``matcher.crowd_ignore`` …).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msvision.models.heads.retinanet.criterion import RetinaNetCriterion
from msvision.models.heads.retinanet.matcher import RetinaNetMatcher
from msvision.models.heads.retinanet.postprocess import RetinaNetPostProcess
from msvision.models.layers import Conv2d
from msvision.ops.anchors import AnchorSpec, anchor_cells, anchors_in_valid_map
from msvision.ops.padding import padding_mask
from msvision.structures import Batch, Detections, ImageBatch

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SubnetSpec:
    """The class and box subnets (config ``model.head.subnets``; module docstring).

    ``num_convs``: C hidden 3×3 convs per subnet (the thesis's C = 1; C = 4 in
    table 3.1 row 8 and in detectron2); ``last_kernel_size``: 1 (thesis) or 3
    (detectron2, torchvision); ``prior_prob``: π of the class-bias init (0.01).
    """

    num_convs: int = 1
    last_kernel_size: int = 1
    prior_prob: float = 0.01


class LossNormalizer(nnx.Variable):
    """EMA of the number of positive anchors (per level or global); not trained."""


class RetinaNetHead(nnx.Module):
    """RetinaNet head over pyramid levels ``levels`` (see the module docstring).

    ``__call__(pyramid)`` returns ``(logits, deltas)``: ``{level: [B, H_l·W_l·A, K]}``
    and ``{level: [B, H_l·W_l·A, 4]}`` in float32 (row-major location, then cell
    anchor, as :mod:`msvision.ops.anchors`).

    Args:
      num_classes: K object classes.
      levels: pyramid levels (``neck.out_levels``), stride ``2**l``.
      channels: pyramid width D (also the subnets' width).
      anchors, subnets: the network (:class:`~msvision.ops.anchors.AnchorSpec`,
        :class:`SubnetSpec`).
      matcher, loss, inference: :class:`.RetinaNetMatcher`,
        :class:`.RetinaNetCriterion`, :class:`.RetinaNetPostProcess`.
    """

    provides_queries = False  # no queries: cannot feed a segmentation head (models/interfaces.py)

    def __init__(
        self,
        num_classes: int,
        levels: Sequence[int] = (3, 4, 5, 6, 7),
        channels: int = 256,
        *,
        anchors: AnchorSpec = AnchorSpec(offset=0.0),
        subnets: SubnetSpec = SubnetSpec(),
        matcher: RetinaNetMatcher = RetinaNetMatcher(),
        loss: RetinaNetCriterion = RetinaNetCriterion(),
        inference: RetinaNetPostProcess = RetinaNetPostProcess(),
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.num_classes = num_classes
        self.levels = tuple(sorted(levels))
        self.anchor_spec = anchors
        self.num_anchors = anchors.num_types
        self.subnet_spec = subnets
        self.matcher = matcher
        self.criterion = loss
        self.postprocess = inference

        init = dict(kernel_init=nnx.initializers.normal(0.01), dtype=dtype, rngs=rngs)
        self.cls_subnet = nnx.List([Conv2d(channels, channels, 3, **init) for _ in range(subnets.num_convs)])
        self.box_subnet = nnx.List([Conv2d(channels, channels, 3, **init) for _ in range(subnets.num_convs)])
        prior_bias = -math.log((1 - subnets.prior_prob) / subnets.prior_prob)
        self.cls_score = Conv2d(
            channels, self.num_anchors * num_classes, subnets.last_kernel_size,
            bias_init=nnx.initializers.constant(prior_bias), **init
        )
        self.bbox_pred = Conv2d(channels, self.num_anchors * 4, subnets.last_kernel_size, **init)
        num_normalizers = loss.num_normalizers(len(self.levels))
        self.loss_normalizer = LossNormalizer(jnp.full((num_normalizers,), loss.normalizer_init, jnp.float32))

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

    # --- anchors -----------------------------------------------------------------------

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

    # --- training ----------------------------------------------------------------------

    def losses(self, pyramid: dict[int, Array], batch: Batch) -> tuple[Array, dict[str, Array]]:
        """Focal + box loss (:mod:`.criterion`) on the targets of :mod:`.matcher`; moves the
        loss normaliser's EMA. fp32."""
        image_sizes = jnp.asarray(batch.image_sizes, jnp.int32)
        logits, deltas = self(pyramid, image_sizes)
        anchors = self.anchors(pyramid)
        level_sizes = [anchors[l].shape[0] for l in self.levels]
        all_anchors = np.concatenate([anchors[l] for l in self.levels])
        logits = jnp.concatenate([logits[l] for l in self.levels], axis=1)  # [B, N, K]
        deltas = jnp.concatenate([deltas[l] for l in self.levels], axis=1)  # [B, N, 4]
        valid = self.anchor_valid(pyramid, image_sizes)
        anchor_valid = jnp.concatenate([valid[l] for l in self.levels], axis=1)
        label, cls_target, box_target = self.matcher(all_anchors, batch, anchor_valid)
        loss, metrics, normalizer = self.criterion(logits, deltas, all_anchors, level_sizes, label, cls_target,
                                                   box_target, self.loss_normalizer[...])
        if self.criterion.normalizer_momentum > 0:
            try:
                self.loss_normalizer[...] = normalizer
            except flax.errors.TraceContextError as e:
                raise RuntimeError(
                    "RetinaNetHead keeps an EMA of the positive-anchor count (loss.normalizer_momentum > 0): "
                    "the train step must build the model inside the differentiated function with "
                    "nnx.merge(graphdef, params, rest, copy=True) and carry nnx.state(model, nnx.Not(nnx.Param)) "
                    "forward; or set model.head.loss.normalizer_momentum=0 (current-batch count)."
                ) from e
        return loss, metrics

    # --- inference ---------------------------------------------------------------------

    def predict(self, pyramid: dict[int, Array], batch: ImageBatch) -> Detections:
        """Detections in padded-input pixels, ``inference.max_detections`` per image."""
        image_sizes = jnp.asarray(batch.image_sizes, jnp.int32)
        logits, deltas = self(pyramid, image_sizes)
        return self.postprocess(logits, deltas, self.anchors(pyramid), self.anchor_valid(pyramid, image_sizes),
                                batch.image_sizes)
