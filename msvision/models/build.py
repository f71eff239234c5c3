"""``build_model(config.model, rngs=...)``: a config section → a :class:`Detector`.

Config schema (``config.model``), defaults = the thesis's R50-FPN-RetinaNet
(chapter 3, C = 1) from :func:`default_model_config`:

  num_classes        int, set from the dataset by the trainer (80 on COCO).
  dtype              'float32' | 'bfloat16': compute dtype (params stay float32,
                     losses float32).
  pixel_mean         RGB mean in 0..255 units (torchvision ImageNet).
  pixel_std          RGB std in 0..255 units.
  backbone:
    name             'resnet'.
    depth            18 | 34 | 50 | 101.
    width            base width (64; tiny tests use e.g. 8).
    frozen_stages    0 trains everything; k ≥ 1 freezes stem + stages 1..k (1,
                     thesis section 2.4).
    freeze_bn        BatchNorm affine frozen (True, thesis); statistics are always
                     fixed.
    norm             'frozen_bn' (thesis, pretrained weights) | 'group_norm'
                     (trainable GroupNorm(8), for training from scratch).
    out_levels       backbone levels returned, within 2..5 ((3, 4, 5); add 2 for P2).
    pretrained       path to a torchvision ResNet ``.pth``; '' = random init.
                     Loaded here (needs torch).
  neck:
    name             'fpn'.
    variant          'mmdet' (extra convs on the lateral P5, the thesis's FPN
                     baseline and the author's fpn_v3) | 'retinanet' (on C5,
                     detectron2's RetinaNet).
    in_levels        backbone levels consumed ((3, 4, 5)).
    out_levels       pyramid levels produced ((3, 4, 5, 6, 7); P2–P7 with 2).
    channels         pyramid width D (256).
  head:
    name             'retinanet' | 'fqdet' (FQDet/FQDetV2 fields:
                     ``msvision/models/heads/fqdet.py``, ``default_fqdet_config``).
    num_convs        C hidden 3×3 convs per subnet (1; the thesis uses 1 or 4).
    anchor_base_scale, anchor_scales_per_octave, anchor_aspect_ratios
                     sizes ``base·2^l·2^(j/n)``, j < n, × ratios h/w (4, 3,
                     (0.5, 1, 2): RetinaNet's 9 anchors).
    anchor_offset    anchor centre at ``stride·(x + offset)`` (0.0: detectron2 and
                     the author's RetinaHead; FQDet's generator uses 0.5).
    prior_prob       class-bias prior π (0.01).
    focal_alpha, focal_gamma   sigmoid focal loss (0.25, 2.0).
    box_loss         'l1' | 'smooth_l1' on deltas ('l1'; detectron2: smooth_l1).
    smooth_l1_beta   β of smooth-L1 (0.1, detectron2).
    box_loss_weight  weight of the box loss (1.0).
    pos_iou, neg_iou IoU thresholds (0.5, 0.4).
    allow_low_quality  detectron2's low-quality matches (True).
    loss_normalization  'per_level' (thesis 3.4.1) | 'global' (detectron2).
    loss_normalizer_momentum  EMA momentum of the positive count (0.9; 0 =
                     current batch only, stateless).
    loss_normalizer_init  initial EMA value (100, detectron2).
    topk_candidates  per-level candidates before NMS (1000).
    score_threshold  minimum score of a candidate (0.05).
    nms_iou          class-aware NMS IoU (0.5).
    max_detections   detections per image (100).

Registries are a plain ``if/elif`` on ``name``.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from flax import nnx

from msvision.models.backbones.convert_torchvision import load_torchvision_resnet
from msvision.models.backbones.resnet import ResNet
from msvision.models.detector import IMAGENET_MEAN, IMAGENET_STD, Detector
from msvision.models.heads.fqdet import build_fqdet_head
from msvision.models.heads.retinanet import RetinaNetHead
from msvision.models.necks.fpn import FPN
from msvision.models.necks.registry_thesis import THESIS_NECKS, build_neck_thesis

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_model_config() -> ml_collections.ConfigDict:
    """The thesis's full-size R50-FPN-RetinaNet (C = 1)."""
    return ml_collections.ConfigDict(
        dict(
            num_classes=80,
            dtype="float32",
            pixel_mean=IMAGENET_MEAN,
            pixel_std=IMAGENET_STD,
            backbone=dict(
                name="resnet", depth=50, width=64, frozen_stages=1, freeze_bn=True, norm="frozen_bn",
                out_levels=(3, 4, 5), pretrained="",
            ),
            neck=dict(name="fpn", variant="mmdet", in_levels=(3, 4, 5), out_levels=(3, 4, 5, 6, 7), channels=256),
            head=dict(
                name="retinanet", num_convs=1, anchor_base_scale=4.0, anchor_scales_per_octave=3,
                anchor_aspect_ratios=(0.5, 1.0, 2.0), anchor_offset=0.0, prior_prob=0.01,
                focal_alpha=0.25, focal_gamma=2.0, box_loss="l1", smooth_l1_beta=0.1, box_loss_weight=1.0,
                pos_iou=0.5, neg_iou=0.4, allow_low_quality=True, loss_normalization="per_level",
                loss_normalizer_momentum=0.9, loss_normalizer_init=100.0, topk_candidates=1000,
                score_threshold=0.05, nms_iou=0.5, max_detections=100,
            ),
        )
    )


def build_model(model_cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> Detector:
    """Builds the detector described by ``model_cfg`` (schema in the module docstring)."""
    if model_cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {model_cfg.dtype!r}")
    dtype = DTYPES[model_cfg.dtype]

    b = model_cfg.backbone
    if b.name == "resnet":
        backbone = ResNet(
            b.depth, out_levels=tuple(b.out_levels), width=b.width, frozen_stages=b.frozen_stages,
            freeze_bn=b.freeze_bn, norm=b.get("norm", "frozen_bn"), dtype=dtype, rngs=rngs,
        )
        if b.pretrained:
            load_torchvision_resnet(backbone, b.pretrained)
    else:
        raise ValueError(f"unknown backbone {b.name!r}")

    n = model_cfg.neck
    in_channels = {l: backbone.out_channels[l] for l in n.in_levels}
    if n.name == "fpn":
        neck = FPN(in_channels, tuple(n.out_levels), n.channels, variant=n.variant, dtype=dtype, rngs=rngs)
    elif n.name in THESIS_NECKS:  # tpn, bifpn, bfpn, hfpn, defenc (fields: registry_thesis docstring)
        neck = build_neck_thesis(n, in_channels=in_channels, rngs=rngs, dtype=dtype)
    else:
        raise ValueError(f"unknown neck {n.name!r}")

    h = model_cfg.head
    if h.name == "retinanet":
        head = RetinaNetHead(
            model_cfg.num_classes, neck.out_levels, neck.channels,
            num_convs=h.num_convs, anchor_base_scale=h.anchor_base_scale,
            anchor_scales_per_octave=h.anchor_scales_per_octave, anchor_aspect_ratios=tuple(h.anchor_aspect_ratios),
            anchor_offset=h.anchor_offset, prior_prob=h.prior_prob, focal_alpha=h.focal_alpha,
            focal_gamma=h.focal_gamma, box_loss=h.box_loss, smooth_l1_beta=h.smooth_l1_beta,
            box_loss_weight=h.box_loss_weight, pos_iou=h.pos_iou, neg_iou=h.neg_iou,
            allow_low_quality=h.allow_low_quality, loss_normalization=h.loss_normalization,
            loss_normalizer_momentum=h.loss_normalizer_momentum, loss_normalizer_init=h.loss_normalizer_init,
            topk_candidates=h.topk_candidates, score_threshold=h.score_threshold, nms_iou=h.nms_iou,
            max_detections=h.max_detections, dtype=dtype, rngs=rngs,
        )
    elif h.name == "fqdet":  # FQDet / FQDetV2 (fields: msvision/models/heads/fqdet.py)
        head = build_fqdet_head(
            h, num_classes=model_cfg.num_classes, levels=neck.out_levels, channels=neck.channels,
            rngs=rngs, dtype=dtype,
        )
    else:
        raise ValueError(f"unknown head {h.name!r}")

    return Detector(
        backbone, neck, head, pixel_mean=tuple(model_cfg.pixel_mean), pixel_std=tuple(model_cfg.pixel_std), dtype=dtype
    )
