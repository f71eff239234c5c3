"""AdamW with the thesis's parameter groups and epoch-based step schedules.

Thesis section 2.4: AdamW, weight decay 1e-4; learning rate 1e-5 for the backbone
and for the linear layers computing the MSDA sampling offsets, 1e-4 for the rest
(FQDetV2 main runs: other values and gradient clipping at max norm 0.1).
Schedules: the learning rate is multiplied by ``decay_factor`` (0.1) after each
epoch listed in ``decay_epochs`` (1x: 12 epochs, drops after 9 and 11).

Config section ``optim``: :class:`msvision.config_sections.OptimConfig` (the fields, their
defaults and what they do).

Parameters not of type ``nnx.Param`` (frozen weights) never reach the optimizer.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from msvision.config_sections import default_section

BACKBONE, OFFSETS, DEFAULT, FROZEN = "backbone", "offsets", "default", "frozen"


def default_optim_config() -> ml_collections.ConfigDict:
    """Every field of the ``optim`` section at its default (:class:`~msvision.config_sections.OptimConfig`)."""
    return default_section("optim")


# Named schedules of thesis section 2.4: (epochs, decay epochs).
SCHEDULES = {
    "1x": (12, (9, 11)),
    "1x_single_drop": (12, (9,)),  # FQDetV2 / EffSeg
    "2x": (24, (18, 22)),
    "2x_fqdetv2": (24, (18, 23)),
    "3x": (36, (27, 33)),
}


def apply_schedule(optim_cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Sets ``epochs`` and ``decay_epochs`` of ``optim_cfg`` to the named schedule of :data:`SCHEDULES`."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    optim_cfg.epochs, optim_cfg.decay_epochs = SCHEDULES[name]
    return optim_cfg


def part_name(path: tuple) -> str:
    """The model part (top-level entry: ``backbone``, ``neck``, ``head``, ...) of a parameter's key path."""
    key = path[0]
    return str(getattr(key, "key", getattr(key, "name", key)))


def parameter_group(path: tuple, frozen_parts: tuple = ()) -> str:
    """The optimizer group of the parameter at ``path`` (a jax key path)."""
    if path and part_name(path) in frozen_parts:
        return FROZEN
    names = jax.tree_util.keystr(path)
    # Offsets first: an MSDA layer inside the backbone (none today) still gets the
    # offset rate, as in the author's code where the first matching name wins.
    if "sampling_offsets" in names:
        return OFFSETS
    if names.startswith("['backbone']") or names.startswith(".backbone"):
        return BACKBONE
    return DEFAULT


def learning_rate_schedule(base_lr: float, cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Piecewise-constant drops after ``cfg.decay_epochs``, with optional linear warm-up."""
    boundaries = {int(round(e * steps_per_epoch)): cfg.decay_factor for e in cfg.decay_epochs}
    schedule = optax.piecewise_constant_schedule(base_lr, boundaries)
    if cfg.warmup_steps > 0:
        warmup = optax.linear_schedule(base_lr * cfg.warmup_factor, base_lr, cfg.warmup_steps)
        schedule = optax.join_schedules([warmup, schedule], [cfg.warmup_steps])
    return schedule


def build_optimizer(
    cfg: ml_collections.ConfigDict, params: Any, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """AdamW over ``params`` (an ``nnx.State`` of ``nnx.Param``) with parameter groups.

    Returns the transformation and the schedule of each group (for logging).
    """
    rates = {BACKBONE: cfg.backbone_lr, OFFSETS: cfg.offset_lr, DEFAULT: cfg.lr}
    schedules = {name: learning_rate_schedule(lr, cfg, steps_per_epoch) for name, lr in rates.items()}
    frozen = tuple(cfg.frozen_parts)
    parts = {part_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    if set(frozen) - parts:
        raise ValueError(f"optim.frozen_parts {sorted(set(frozen) - parts)} are not parts of this model "
                         f"(its parts: {sorted(parts)})")
    labels = jax.tree_util.tree_map_with_path(lambda path, _: parameter_group(path, frozen), params)

    transforms = {name: optax.adamw(s, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
                  for name, s in schedules.items()}
    if frozen:  # only then: the optimizer state of runs without frozen parts keeps its layout
        transforms[FROZEN] = optax.set_to_zero()
    tx = optax.multi_transform(transforms, labels)
    if cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx, schedules
