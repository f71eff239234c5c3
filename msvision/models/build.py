"""``build_model(config.model, rngs=...)``: a config section → a :class:`Detector`.

``config.model`` has the detector-level fields of :data:`MODEL_FIELDS` and one
section per part, ``backbone``, ``neck``, ``head`` and ``seg_head``, each with a
``name`` that picks the module from :data:`BACKBONES`, :data:`NECKS`, :data:`HEADS`
or :data:`SEG_HEADS`. ``seg_head`` is optional: its default ``'none'`` is a detector;
a segmentation head (``'effseg'`` or one of its baselines ``'maskrcnn'``, ``'pointrend'``,
``'refinemask'``, thesis chapter 5) adds masks, reading the
pyramid and the detection head's queries, boxes and matches: the head must declare
``provides_queries`` (:mod:`msvision.models.interfaces`). The rest
of a part's section maps one to one onto that module's constructor keyword
arguments (:mod:`msvision.config_schema`), a frozen-dataclass argument being a nested
section (both detection heads: ``anchors``, the network's spec, ``matcher``, ``loss``,
``inference``; a setting they share has one name, e.g. ``inference.nms_iou``): defaults
live in the signatures only, unknown keys fail naming the closest valid key, and
:func:`resolve_model_config` fills in every default so the saved config is
complete. ``python -m msvision.models.build --kind neck --name tpn`` prints a
module's fields with their defaults.

Arguments the builder supplies itself (not config fields): ``rngs`` and ``dtype``
(from ``model.dtype``) everywhere; the neck's ``in_channels`` (from the backbone);
the head's ``num_classes`` (from ``model.num_classes``, set from the dataset by
the trainer), ``levels`` and ``channels`` (from the neck); the segmentation
head's ``levels`` and ``channels`` (from the neck) and, for the heads that declare
``class_specific`` (the ++ baselines), ``num_classes``. Builder-level fields:
``backbone.pretrained`` (a checkpoint loaded after construction by the backbone's
loader: a torchvision ResNet ``.pth``, or an official / mmdet / torchvision Swin
``.pth``, :mod:`msvision.models.backbones.pretrained`; needs torch).

With no fields set, the model is the thesis's R50-FPN-RetinaNet (chapter 3, C = 1).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

import jax.numpy as jnp
import ml_collections
from flax import nnx

from msvision.config_schema import ConfigError, resolve_section, schema_config, section_kwargs, signature_schema
from msvision.models.backbones.resnet import ResNet
from msvision.models.backbones.swin import SwinTransformer
from msvision.models.detector import IMAGENET_MEAN, IMAGENET_STD, Detector
from msvision.models.heads.effseg import EffSegHead
from msvision.models.heads.fqdet import FQDetHead
from msvision.models.heads.mask_baselines import MaskRCNNHead, PointRendHead
from msvision.models.heads.refinemask import RefineMaskHead
from msvision.models.heads.retinanet import RetinaNetHead
from msvision.models.necks.bfpn import BottleneckFPN
from msvision.models.necks.bifpn import BiFPN
from msvision.models.necks.defenc import DefEncoder
from msvision.models.necks.fpn import FPN
from msvision.models.necks.tpn import TPN

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# name -> (constructor, arguments fixed by the name)
BACKBONES: dict[str, tuple[Callable, dict]] = {"resnet": (ResNet, {}), "swin": (SwinTransformer, {})}
NECKS: dict[str, tuple[Callable, dict]] = {
    "fpn": (FPN, {}),
    "tpn": (TPN, {}),
    "bifpn": (BiFPN, {}),
    "bfpn": (BottleneckFPN, {"bottlenecks_first": True}),
    "hfpn": (BottleneckFPN, {"bottlenecks_first": False}),
    "defenc": (DefEncoder, {}),
}
HEADS: dict[str, tuple[Callable, dict]] = {"retinanet": (RetinaNetHead, {}), "fqdet": (FQDetHead, {})}
# 'none': no segmentation head (a detector). Segmentation heads need a head with provides_queries.
SEG_HEADS: dict[str, tuple[Callable | None, dict]] = {
    "none": (None, {}),
    "effseg": (EffSegHead, {}),
    "maskrcnn": (MaskRCNNHead, {}),  # Mask R-CNN++ (thesis §5.4.1)
    "pointrend": (PointRendHead, {}),  # PointRend++
    "refinemask": (RefineMaskHead, {}),  # RefineMask++
}
REGISTRIES = {"backbone": BACKBONES, "neck": NECKS, "head": HEADS, "seg_head": SEG_HEADS}
DEFAULT_NAMES = {"backbone": "resnet", "neck": "fpn", "head": "retinanet", "seg_head": "none"}

SUPPLIED = {
    "backbone": ("dtype", "rngs"),
    "neck": ("in_channels", "dtype", "rngs"),
    "head": ("num_classes", "levels", "channels", "dtype", "rngs"),
    "seg_head": ("num_classes", "levels", "channels", "dtype", "rngs"),
}
BUILDER_FIELDS = {"backbone": {"pretrained": ""}, "neck": {}, "head": {}, "seg_head": {}}

# Detector-level fields of ``config.model`` (with the part sections).
MODEL_FIELDS = dict(
    num_classes=80,  # set from the dataset by the trainer
    dtype="float32",  # compute dtype: 'float32' | 'bfloat16' (params and losses stay float32)
    pixel_mean=IMAGENET_MEAN,  # RGB, 0..255 units (torchvision ImageNet)
    pixel_std=IMAGENET_STD,
)


def module_schema(kind: str, name: str) -> dict:
    """Config schema of part ``kind`` ('backbone' | 'neck' | 'head') named ``name``."""
    registry = REGISTRIES[kind]
    if name not in registry:
        raise ConfigError(f"model.{kind}.name: unknown {kind} {name!r}; choose from {sorted(registry)}")
    fn, fixed = registry[name]
    if fn is None:
        return {"name": name}
    return {"name": name, **BUILDER_FIELDS[kind], **signature_schema(fn, SUPPLIED[kind] + tuple(fixed))}


def module_config(kind: str, name: str) -> ml_collections.ConfigDict:
    """Every field of a part's config section at its default, e.g. ``module_config('head', 'fqdet')``."""
    return schema_config(module_schema(kind, name))


def resolve_model_config(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config.model`` checked against the schemas and completed: a new section (``model_cfg``
    is unchanged).

    Raises:
      ConfigError: an unknown module name or key (naming the closest valid keys).
    """
    if not isinstance(model_cfg, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"config key 'model' is a section, got the value {model_cfg!r}")
    fields = {key: model_cfg[key] for key in model_cfg.keys() if key not in REGISTRIES}
    # The part sections are checked below, against the schema of the module they name.
    out = resolve_section(fields, {**MODEL_FIELDS, **{kind: {} for kind in REGISTRIES}}, "model")
    for kind in REGISTRIES:
        out[kind] = resolve_part(kind, model_cfg[kind] if kind in model_cfg else ml_collections.ConfigDict())
    if out.dtype not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {out.dtype!r}")
    return out


def resolve_part(kind: str, section: Any) -> ml_collections.ConfigDict:
    """A part's section ('backbone' | 'neck' | 'head' | 'seg_head') checked against the schema
    of the module it names (:data:`DEFAULT_NAMES` when it names none) and completed: a new section."""
    if not isinstance(section, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"model.{kind} must be a config section, got {section!r}")
    name = section["name"] if "name" in section else DEFAULT_NAMES[kind]
    return resolve_section(section, module_schema(kind, name), f"model.{kind}", f"{kind} {name!r}")


def default_model_config() -> ml_collections.ConfigDict:
    """The thesis's full-size R50-FPN-RetinaNet (C = 1), every field explicit."""
    return resolve_model_config(ml_collections.ConfigDict())


def build_part(kind: str, section: Any, **supplied: Any):
    """Builds one part ('backbone' | 'neck' | 'head' | 'seg_head') from its config section
    (None for ``seg_head`` 'none').

    Args:
      section: the section (a ``ConfigDict`` or dict; missing fields take their
        defaults, unknown ones fail).
      supplied: the arguments the builder supplies (see the module docstring), e.g.
        ``in_channels=..., rngs=...`` for a neck.
    """
    section = resolve_part(kind, section)
    fn, fixed = REGISTRIES[kind][section.name]
    if fn is None:
        return None
    kwargs = section_kwargs(section, fn, skip=("name", *BUILDER_FIELDS[kind]))
    return fn(**kwargs, **fixed, **supplied)


def build_model(model_cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> Detector:
    """Builds the detector described by ``model_cfg`` (see the module docstring)."""
    model_cfg = resolve_model_config(model_cfg)
    seg_cls = SEG_HEADS[model_cfg.seg_head.name][0]
    if seg_cls is not None and not HEADS[model_cfg.head.name][0].provides_queries:
        raise ConfigError(f"model.seg_head {model_cfg.seg_head.name!r} needs a query-based detection head "
                          f"(model.head.name='fqdet'), got {model_cfg.head.name!r}")
    dtype = DTYPES[model_cfg.dtype]
    backbone = build_part("backbone", model_cfg.backbone, dtype=dtype, rngs=rngs)
    if model_cfg.backbone.pretrained:
        from msvision.models.backbones.pretrained import load_pretrained_backbone

        load_pretrained_backbone(backbone, model_cfg.backbone.pretrained)
    neck = build_part("neck", model_cfg.neck, in_channels=dict(backbone.out_channels), dtype=dtype, rngs=rngs)
    head = build_part("head", model_cfg.head, num_classes=model_cfg.num_classes, levels=neck.out_levels,
                       channels=neck.channels, dtype=dtype, rngs=rngs)
    seg_supplied = dict(levels=neck.out_levels, channels=neck.channels, dtype=dtype, rngs=rngs)
    if seg_cls is not None and seg_cls.class_specific:  # one mask per class
        seg_supplied["num_classes"] = model_cfg.num_classes
    seg_head = build_part("seg_head", model_cfg.seg_head, **seg_supplied)
    return Detector(backbone, neck, head, seg_head, pixel_mean=tuple(model_cfg.pixel_mean),
                    pixel_std=tuple(model_cfg.pixel_std), dtype=dtype)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Print a model part's config fields and their defaults.")
    parser.add_argument("--kind", choices=sorted(REGISTRIES), required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(module_config(args.kind, args.name).to_dict(), indent=2, default=str))


if __name__ == "__main__":
    main()
