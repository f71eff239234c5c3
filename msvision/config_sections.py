"""The sections of a run config, their schemas, and the command line every command shares.

A run config (``configs/*.py``) has a top-level ``seed`` and the sections of
:data:`SECTIONS`, each checked against one schema whose defaults are stated there
and nowhere else:

- ``model``: the detector, :func:`msvision.models.build.resolve_model_config` (each
  part's section is the constructor signature of the module its ``name`` picks);
- ``data``: :class:`msvision.data.pipeline.DataConfig`;
- ``optim``, ``train``, ``eval``: :class:`OptimConfig`, :class:`TrainConfig`,
  :class:`EvalConfig` below. Training reads them (``msvision.train``), but prediction and
  export resolve the same config files and import nothing from training, so their
  schemas live here.

A schema of ``data``, ``optim``, ``train`` and ``eval`` is a frozen dataclass: its
constructor's keyword arguments are the section's fields and hold their defaults, the rule
the model parts follow (:mod:`msvision.config_schema`); a nested section is a field whose
default is a frozen dataclass (``data.train``, ``data.augment``, ``eval.panoptic``). The
code reads the resolved ``ConfigDict`` sections (``config.optim.lr``), never a default of
its own.

The commands (``train.py``, ``eval.py``, ``python -m msvision.predict``,
``msvision.export``, ``msvision.analysis``) read ``--config=FILE[:ARG]`` and the
``--config.a.b=VALUE`` overrides with :func:`add_config_argument`, :func:`parse_args`
and :func:`config_from_args` (the override syntax: :func:`msvision.config.apply_overrides`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional, Sequence

import ml_collections

from msvision import config as config_lib
from msvision.config_schema import section_defaults
from msvision.data.pipeline import DataConfig
from msvision.evaluation.panoptic_postprocess import PanopticPostProcess
from msvision.models.build import resolve_model_config


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Config section ``optim``: AdamW with the thesis's parameter groups and epoch-based
    step schedule (:mod:`msvision.train.optimizer`, thesis section 2.4).

    Attributes:
      lr: base learning rate (everything not in another group).
      backbone_lr: learning rate for parameters under the model's ``backbone``.
      offset_lr: learning rate for parameters whose path contains ``sampling_offsets``
        (the MSDA sampling offsets).
      weight_decay: AdamW decoupled weight decay.
      b1, b2, eps: Adam moments.
      clip_norm: gradient clipping by global norm; 0 disables.
      epochs: training length in epochs (used when ``train.num_steps`` is 0).
      decay_epochs: epochs after which the learning rate drops, e.g. (9, 11) (1x).
      decay_factor: the drop factor.
      warmup_steps: linear warm-up from ``warmup_factor`` × lr, 0 disables.
      warmup_factor: start of the warm-up.
      frozen_parts: model parts (top-level ``params`` entries, e.g. ``("backbone",
        "neck", "head")``) that do not train: their gradients are not computed and they
        are not updated, weight decay included. E.g. a new head trained on a fixed
        detector.
    """

    lr: float = 1e-4
    backbone_lr: float = 1e-5
    offset_lr: float = 1e-5
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 0.0
    epochs: int = 12
    decay_epochs: tuple[int, ...] = (9, 11)
    decay_factor: float = 0.1
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    frozen_parts: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Config section ``train``: the training loop (:mod:`msvision.train.loop`).

    Attributes:
      num_steps: total optimizer steps; 0 means ``optim.epochs`` epochs.
      log_every: steps between metric rows (and non-finite loss checks).
      checkpoint_every: steps between checkpoints (also saved at the end).
      keep_checkpoints: how many checkpoints to keep.
      eval_every: steps between evaluations during training; 0 evaluates only at the
        end when ``eval_at_end`` is set.
      eval_at_end: evaluate the final model on the validation split.
      async_checkpoint: write checkpoints in a background thread.
      init_from: a work directory whose latest checkpoint initialises the model parts
        ``init_parts`` of a run that starts fresh (a resumed run restores its own
        checkpoint instead); the other parts (e.g. a new segmentation head), the
        optimizer state and the step start anew. Like detectron2's ``MODEL.WEIGHTS``:
        fine-tune a trained detector into an instance segmenter. The parts must have
        the same shapes in both models.
      init_parts: the model parts (``params`` entries) read from ``init_from``.
    """

    num_steps: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 0
    eval_at_end: bool = True
    async_checkpoint: bool = True
    init_from: str = ""
    init_parts: tuple[str, ...] = ("backbone", "neck", "head")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Config section ``eval``: evaluation (:mod:`msvision.train.evaluate`).

    Attributes:
      visualize: pictures of the first images drawn at the end of training.
      box_mask_baseline: with a segmentation head, also score the predicted boxes filled
        as masks (``box_as_mask/...`` metrics), the reference a mask head has to beat.
      boundary_ap: with a segmentation head, also the mask AP with the Boundary IoU
        (``boundary/AP``, …; :mod:`msvision.evaluation.coco_boundary`; costs a pass over
        every mask).
      lvis_annotations: with a segmentation head, also AP* (``lvis_segm/AP``, …) against this
        LVIS-style ground truth of the validation images (e.g. cocofied LVIS v0.5 val,
        ``python -m msvision.evaluation.lvis cocofy``; thesis section 5.4.1), and with
        ``boundary_ap`` AP^B* (``lvis_boundary/AP``, …); '' for none.
      panoptic: the post-processing of a panoptic dataset (``data.source='coco_panoptic'``),
        :class:`msvision.evaluation.panoptic_postprocess.PanopticPostProcess`.
    """

    visualize: int = 8
    box_mask_baseline: bool = False
    boundary_ap: bool = False
    lvis_annotations: str = ""
    panoptic: PanopticPostProcess = PanopticPostProcess()


# {top-level key: schema} of a run config (msvision.config.resolve_config).
SECTIONS = {
    "seed": 0,  # model initialisation, data order and augmentation
    "model": resolve_model_config,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` checked against :data:`SECTIONS` and completed: a new config (``config`` is
    unchanged). Raises ``ConfigError`` on an unknown key, naming the closest valid keys."""
    return config_lib.resolve_config(config, SECTIONS)


def resolve_section(name: str, section: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The section ``name`` of a run config (e.g. ``'data'``) checked against its schema and
    completed: a new section (``section`` is unchanged)."""
    return config_lib.resolve_config(ml_collections.ConfigDict({name: section}), {name: SECTIONS[name]})[name]


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The run config of the file ``path`` (``FILE[:ARG]``) with the ``--config.a.b=VALUE``
    ``overrides``, resolved (:func:`msvision.config.load_config`)."""
    return config_lib.load_config(path, overrides, sections=SECTIONS)


def default_section(name: str) -> ml_collections.ConfigDict:
    """Every field of the section ``name`` (``'data'``, ``'optim'``, ``'train'``, ``'eval'``)
    at its default."""
    return section_defaults(SECTIONS[name])


# ------------------------------------------------------------------ command line
def add_config_argument(parser: argparse.ArgumentParser, *, required: bool = True,
                        help: str = "the config file (get_config())") -> None:
    """``--config=FILE[:ARG]``; the ``--config.a.b=VALUE`` overrides are read by :func:`parse_args`."""
    parser.add_argument("--config", required=required, metavar="FILE[:ARG]",
                        help=f"{help}; FILE:ARG passes ARG to get_config(); override any field with "
                             "--config.a.b=VALUE (a Python literal, e.g. --config.optim.lr=5e-5, "
                             "--config.optim.decay_epochs='(9,)', or a string)")


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """``argv`` parsed by ``parser``; the ``--config.a.b=VALUE`` overrides, which ``argparse``
    does not know, are set aside in ``args.config_overrides`` (in order)."""
    overrides, rest = config_lib.split_config_args(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    args.config_overrides = overrides
    return args


def config_from_args(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """The resolved run config of ``args.config`` with ``args.config_overrides``."""
    return load_config(args.config, args.config_overrides)
