"""The training loop: read it top to bottom in :func:`train`.

Design: the model is split once into a graph definition and
state (``nnx.split``); the jitted step is a pure function over
``(state, batch) -> (state, metrics)`` that merges, computes the loss, updates
with optax and returns the new state. Shardings are explicit: the batch is split
over the mesh's ``data`` axis, the state replicated; the state is donated.

Config section ``train``: :class:`msvision.config_sections.TrainConfig`. The loop writes
into no config it is given: :func:`build_trainer` makes the run's own config
(:func:`run_config`: the dataset's classes and paths filled in), the one saved to
``WORKDIR/config.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from msvision import checkpoint as checkpoint_lib
from msvision import config as config_lib
from msvision import config_sections
from msvision.cache import enable_compilation_cache
from msvision.models.abstract import abstract_init, cheap_tracer_errors
from msvision.models.build import build_model, resolve_model_config
from msvision.train import data_setup as data_lib
from msvision.train import metrics as metrics_lib
from msvision.train import optimizer as optimizer_lib
from msvision.train import sharding as sharding_lib
from msvision.train import workdir_lock

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the last verified checkpoint."""


@dataclasses.dataclass
class Trainer:
    """Everything the loop and evaluation need, built once from the config."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    graphdef: Any
    state: dict  # {"step", "params", "rest", "opt_state", "rng"}
    train_step: Callable
    predict_step: Callable
    schedules: dict
    dataset_info: Any


def init_model_state(config: ml_collections.ConfigDict, num_classes: int):
    """Builds the model of ``config.model`` with ``num_classes`` classes and splits it into
    ``(graphdef, params, rest)`` (``config`` is unchanged).

    Initialisation runs as one jitted function (eager init would compile every
    initialiser separately); pretrained backbone weights are loaded afterwards.
    """
    model_cfg = resolve_model_config(config.model)  # a new section
    pretrained = model_cfg.backbone.pretrained
    model_cfg.num_classes = num_classes
    model_cfg.backbone.pretrained = ""

    def init():
        return nnx.split(build_model(model_cfg, rngs=nnx.Rngs(config.seed)), nnx.Param, ...)[1:]

    abstract_model = abstract_init(lambda: build_model(model_cfg, rngs=nnx.Rngs(config.seed)))
    graphdef = nnx.split(abstract_model, nnx.Param, ...)[0]
    with cheap_tracer_errors():  # tracing init draws every initialiser (msvision.models.abstract)
        params, rest = jax.jit(init)()
    if pretrained:
        from msvision.models.backbones.pretrained import load_pretrained_backbone

        model = nnx.merge(graphdef, params, rest)
        load_pretrained_backbone(model.backbone, pretrained)
        _, params, rest = nnx.split(model, nnx.Param, ...)
        log.info("loaded pretrained backbone weights from %s", pretrained)
    return graphdef, params, rest


def make_train_step(graphdef, tx: optax.GradientTransformation, schedules: dict,
                    frozen_parts: tuple = ()) -> Callable:
    """The pure train step ``(state, batch) -> (state, metrics)``.

    The parameters of ``frozen_parts`` (``optim.frozen_parts``) are constants of the loss:
    their gradients are zeros and the backward pass through them is not run.
    """

    def train_step(state: dict, batch) -> tuple[dict, dict]:
        def loss_fn(params):
            if frozen_parts:
                params = jax.tree_util.tree_map_with_path(
                    lambda path, x: jax.lax.stop_gradient(x) if optimizer_lib.part_name(path) in frozen_parts else x,
                    params)
            model = nnx.merge(graphdef, params, state["rest"], copy=True)
            # one key per step for training-time randomness (Swin's stochastic depth)
            loss, metrics = model.losses(batch, rng=jax.random.fold_in(state["rng"], state["step"]))
            # Non-parameter state the forward pass updated (e.g. a loss-normaliser EMA).
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, rest)

        (loss, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        step = state["step"]
        metrics = {f"train/{k}": v for k, v in metrics.items()}
        metrics["train/loss"] = loss
        metrics["train/grad_norm"] = optax.global_norm(grads)
        for name, schedule in schedules.items():
            metrics[f"lr/{name}"] = schedule(step)
        new_state = dict(state, step=step + 1, params=params, rest=rest, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_predict_step(graphdef) -> Callable:
    def predict_step(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        return model.predict(batch)

    return predict_step


def steps_per_epoch(num_images: int, global_batch_size: int) -> int:
    return max(1, num_images // global_batch_size)


def total_steps(config: ml_collections.ConfigDict, num_images: int) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    return int(config.optim.epochs * steps_per_epoch(num_images, config.data.batch_size))


def run_config(config: ml_collections.ConfigDict, dataset_info) -> ml_collections.ConfigDict:
    """The config a run uses: ``config`` resolved (a new config) with the data section of
    ``dataset_info`` (the synthetic dataset's paths filled in) and ``model.num_classes`` from its
    class list."""
    config = config_sections.resolve_config(config)
    config.data = dataset_info.data_cfg.copy_and_resolve_references()
    config.model.num_classes = dataset_info.classes.num_classes
    return config


def build_trainer(config: ml_collections.ConfigDict, dataset_info) -> Trainer:
    """The model, optimizer, sharded steps and state of ``config`` on ``dataset_info``
    (``Trainer.config``: :func:`run_config`; ``config`` is unchanged)."""
    config = run_config(config, dataset_info)
    mesh = sharding_lib.make_mesh()
    sharding_lib.check_batch_size(config.data.batch_size, mesh)
    graphdef, params, rest = init_model_state(config, dataset_info.classes.num_classes)
    spe = steps_per_epoch(dataset_info.num_train_images, config.data.batch_size)
    if config.train.num_steps > 0 and config.optim.epochs > 0:
        # Epoch-based decays are defined over the configured epochs; a run given in
        # steps stretches them to its length.
        spe = config.train.num_steps / config.optim.epochs
    tx, schedules = optimizer_lib.build_optimizer(config.optim, params, spe)
    replicated = sharding_lib.replicated(mesh)
    state = dict(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(config.seed),  # folded with the step: training-time randomness (drop path)
    )
    state = jax.device_put(state, replicated)
    train_step, predict_step = jit_sharded_steps(graphdef, tx, schedules, mesh, state,
                                                 frozen_parts=tuple(config.optim.frozen_parts))
    return Trainer(config, mesh, graphdef, state, train_step, predict_step, schedules, dataset_info)


def jit_sharded_steps(graphdef, tx: optax.GradientTransformation, schedules: dict, mesh: jax.sharding.Mesh,
                      state: dict, frozen_parts: tuple = ()) -> tuple[Callable, Callable]:
    """The jitted train and predict steps with the data-parallel shardings of :func:`train`.

    ``state`` (arrays or ``ShapeDtypeStruct``s; only its tree structure is used) is
    replicated and donated; the batch is split over the mesh's ``data`` axis.
    ``msvision.analysis.lowering`` lowers exactly these functions for other platforms.
    """
    replicated = sharding_lib.replicated(mesh)
    state_sharding = jax.tree.map(lambda _: replicated, state)
    batch_sharding = sharding_lib.batch_sharded(mesh)
    train_step = jax.jit(
        make_train_step(graphdef, tx, schedules, frozen_parts),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    predict_step = jax.jit(
        make_predict_step(graphdef),
        in_shardings=(state_sharding["params"], state_sharding["rest"], batch_sharding),
        out_shardings=batch_sharding,
    )
    return train_step, predict_step


def _fetch(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _compiled_count(fn) -> int:
    size = getattr(fn, "_cache_size", None)
    return int(size()) if callable(size) else -1


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from ``workdir`` if it has a checkpoint) and returns final metrics."""
    enable_compilation_cache()
    sharding_lib.initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    # One writer per work directory (msvision.train.workdir_lock): before anything is written.
    lock = workdir_lock.acquire_for_run(workdir)
    try:
        return _train(config, workdir)
    finally:
        if lock is not None:
            lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    config = config_sections.resolve_config(config)
    dataset_info = data_lib.dataset_info(config.data)
    trainer = build_trainer(config, dataset_info)
    config = trainer.config  # the dataset's classes and paths filled in
    if jax.process_index() == 0:
        # After the dataset paths and num_classes are resolved: the config actually used, and the
        # class list (dataset.json) that evaluation, prediction and export read.
        config_lib.save_config(config, os.path.join(workdir, "config.json"))
        data_lib.save_dataset_file(dataset_info, workdir)
    num_steps = total_steps(config, dataset_info.num_train_images)
    ckpt = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        every_steps=config.train.checkpoint_every,
        keep=config.train.keep_checkpoints,
        async_save=config.train.async_checkpoint,
    )
    state, start_step, train_iter = resume(trainer, ckpt)
    writer = metrics_lib.MetricWriter(workdir)
    progress = metrics_lib.Progress(num_steps, start_step, config.data.batch_size)
    shapes_seen: set = set()
    last_metrics: dict[str, float] = {}
    step = start_step
    try:
        while step < num_steps:
            local_batch = next(train_iter)
            shapes_seen.add(tuple(local_batch.images.shape))
            batch = sharding_lib.shard_batch(local_batch, trainer.mesh)
            state, metrics = trainer.train_step(state, batch)
            step += 1
            if step == start_step + 1:
                jax.block_until_ready(metrics)  # the first step includes compilation
                progress.reset_timer(step)
            must_log = step % config.train.log_every == 0 or step == num_steps
            must_save = ckpt.should_save(step) or step == num_steps
            if must_log or must_save:
                last_metrics = _fetch(metrics)
                if not math.isfinite(last_metrics["train/loss"]):
                    verified = ckpt.latest_intact_step()
                    last = (f"The last verified checkpoint is step {verified} in {ckpt.directory}"
                            if verified is not None else f"No checkpoint in {ckpt.directory} passes verification")
                    raise NonFiniteLossError(
                        f"loss is {last_metrics['train/loss']} at step {step}; stopping without saving. "
                        f"{last}. Lower the learning rate, enable optim.clip_norm, or check the data."
                    )
                timing = progress.update(step, last_metrics)
                row = dict(last_metrics, **timing)
                row["perf/compiled_train_shapes"] = len(shapes_seen)
                row["checkpoint/skipped"] = len(ckpt.skipped)
                row.update(data_lib.data_stats_metrics(dataset_info))
                writer.write(step, row)
            else:
                progress.update(step)
            if must_save:
                ckpt.save(step, state, train_iter, meta=dict(num_steps=num_steps, batch_size=config.data.batch_size))
                if jax.process_index() == 0:
                    data_lib.save_data_faults(dataset_info, workdir)
                progress.reset_timer(step)
            eval_every = config.train.eval_every
            if eval_every and step % eval_every == 0 and step != num_steps:
                eval_metrics = evaluate_state(trainer, state, workdir, step)
                writer.write(step, eval_metrics)
                progress.reset_timer(step)
    finally:
        progress.close()
        ckpt.close()
    compiled = _compiled_count(trainer.train_step)
    log.info(
        "distinct input shapes: %d; compiled train-step variants: %s",
        len(shapes_seen),
        compiled if compiled >= 0 else "n/a",
    )
    final = dict(last_metrics)
    final["perf/compiled_train_shapes"] = len(shapes_seen)
    if config.train.eval_at_end:
        eval_metrics = evaluate_state(trainer, state, workdir, step, visualize_count=config.eval.visualize)
        writer.write(step, eval_metrics)
        final.update(eval_metrics)
    writer.close()
    trainer.state = state
    return final


def initialize_from(state: dict, workdir: str, parts: tuple[str, ...]) -> dict:
    """``state`` with ``params[part]`` for every ``part`` of ``parts`` read from the latest
    intact checkpoint of ``workdir`` (``train.init_from``); everything else unchanged.

    Parameters whose shape differs in the source (e.g. class-specific layers of a detector
    trained on other classes) or that it lacks keep this run's initialisation and are
    logged, as detectron2 does when it loads ``MODEL.WEIGHTS``.

    Raises:
      NoCheckpointError: ``workdir`` has no (intact) checkpoint.
      ValueError: a part is not in this model or not in the source.
    """
    missing = [p for p in parts if p not in state["params"]]
    if missing:
        raise ValueError(f"train.init_parts {missing} are not parts of this model "
                         f"(its parts: {sorted(state['params'])})")
    step = checkpoint_lib.find_checkpoint_step(workdir)
    source = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=0)
    try:
        saved = source.state_metadata(step)["params"]
        absent = [p for p in parts if p not in saved]
        if absent:
            raise ValueError(f"train.init_parts {absent} are not in the checkpoint of {workdir} "
                             f"(its parts: {sorted(saved)})")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = {"params": {p: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                               saved[p]) for p in parts}}
        _, restored = source.restore_subtree(abstract, step=step)
    finally:
        source.close()
    params = state["params"]
    kept = []
    for part in parts:
        values = {checkpoint_lib.path_name(path): value
                  for path, value in jax.tree_util.tree_flatten_with_path(restored["params"][part])[0]}

        def take(path, mine):
            name = checkpoint_lib.path_name(path)
            value = values.get(name)
            if value is None or value.shape != mine.shape:
                kept.append(f"{part}/{name} {tuple(mine.shape)}"
                            + ("" if value is None else f" (checkpoint {tuple(value.shape)})"))
                return mine
            return jax.device_put(value.astype(mine.dtype), mine.sharding)

        params[part] = jax.tree_util.tree_map_with_path(take, params[part])
    log.info("initialised %s from step %d of %s", ", ".join(parts), step, workdir)
    if kept:
        log.warning("%d parameters keep their initialisation (absent or of another shape in %s): %s",
                    len(kept), workdir, "; ".join(kept))
    return dict(state, params=params)


def resume(trainer: Trainer, ckpt: checkpoint_lib.Checkpointer) -> tuple[dict, int, Any]:
    """The train state, first step and this process's data iterator: from the latest
    checkpoint of ``ckpt`` if there is one, else fresh.

    A checkpoint written by as many processes as this run has restores the grain
    iterator state. One written by another number of processes (e.g. 2 processes,
    resumed in 1) restores the train state and starts the data stream at the
    checkpoint's step: global batch ``k`` holds the same images whatever the number
    of processes (``msvision.data.pipeline``), so the run continues with the batches
    an uninterrupted run would have read.
    """
    config, info = trainer.config, trainer.dataset_info

    def data_iterator(start_step: int = 0):
        return data_lib.build_train_iterator(info, seed=config.seed, shard_index=jax.process_index(),
                                             shard_count=jax.process_count(), start_step=start_step)

    step = select_resume_step(ckpt)
    if step is None:
        state = trainer.state
        if config.train.init_from:
            state = initialize_from(state, config.train.init_from, tuple(config.train.init_parts))
        return state, 0, data_iterator()
    abstract = checkpoint_lib.abstract_like(trainer.state)
    meta = ckpt.read_meta(step)
    saved_batch = meta.get("batch_size", config.data.batch_size)
    if saved_batch != config.data.batch_size:
        log.warning("the checkpoint was trained with global batch size %d, this run uses %d: the data "
                    "stream (batch k = images k·B … (k+1)·B − 1) differs from an uninterrupted run",
                    saved_batch, config.data.batch_size)
    if ckpt.data_restorable(step):
        train_iter = data_iterator()
        start_step, state, _ = ckpt.restore(abstract, train_iter, step=step)
        log.info("resuming from step %d", start_step)
    else:
        start_step, state, _ = ckpt.restore(abstract, step=step)
        train_iter = data_iterator(start_step)
        log.info("resuming from step %d, written by %s processes: %d processes now, data stream "
                 "repositioned to batch %d", start_step, meta.get("data_processes"), jax.process_count(),
                 start_step)
    return state, start_step, train_iter


FRESH, NONE_INTACT, FRESH_OVER_UNFINISHED = -1, -2, -3  # select_resume_step's choices besides a step


def select_resume_step(ckpt: checkpoint_lib.Checkpointer) -> Optional[int]:
    """The checkpoint training resumes from: the newest intact one (None: no checkpoint, a
    fresh start). Newer checkpoints that fail verification are recorded in ``ckpt.skipped``
    and moved to ``checkpoints/skipped/`` (the run will write those steps again). When
    every checkpoint is a save that never finished (a run killed during its first save),
    there is nothing complete to lose: they are set aside the same way and training
    starts from step 0. Process 0 decides; the others follow it.

    Raises:
      NoCheckpointError: there are checkpoints, none intact, and at least one of them
        complete but damaged (the message names the directory and what is wrong with each):
        starting afresh over it is the user's decision.
    """
    choice, error = FRESH, ""
    if jax.process_index() == 0 and checkpoint_lib.checkpoint_steps(ckpt.directory):
        try:
            choice, skipped = checkpoint_lib.select_checkpoint(ckpt.directory)
            ckpt.skipped += skipped
        except checkpoint_lib.NoCheckpointError as e:
            if e.skipped and all(s.unfinished for s in e.skipped):
                choice = FRESH_OVER_UNFINISHED
                ckpt.skipped += list(e.skipped)
            else:
                choice, error = NONE_INTACT, str(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        choice = int(multihost_utils.broadcast_one_to_all(np.int32(choice)))
    if choice == NONE_INTACT:
        raise NoCheckpointError(error or f"no intact checkpoint in {ckpt.directory} (see process 0's log)")
    if choice == FRESH:
        return None
    newer = [s for s in checkpoint_lib.checkpoint_steps(ckpt.directory) if s > choice]
    if newer or jax.process_count() > 1:  # every process joins set_aside's barrier
        ckpt.set_aside(newer)
    if choice == FRESH_OVER_UNFINISHED:
        log.warning("no checkpoint in %s was complete (the run stopped during its first save): "
                    "starting from step 0", ckpt.directory)
        return None
    return choice


def evaluate_state(trainer: Trainer, state: dict, workdir: str, step: int, *, visualize_count: int = 0,
                   extra_metrics: Optional[dict] = None) -> dict:
    """Runs inference over the validation split and COCO evaluation; see ``msvision.train.evaluate``
    (``extra_metrics`` are written into the step's metrics file too)."""
    from msvision.train.evaluate import evaluate_detector

    return evaluate_detector(
        trainer.config,
        trainer.dataset_info,
        lambda batch: trainer.predict_step(state["params"], state["rest"], batch),
        trainer.mesh,
        workdir,
        step,
        visualize_count=visualize_count,
        extra_metrics=extra_metrics,
    )


NoCheckpointError = checkpoint_lib.NoCheckpointError


def restore_for_eval(config: ml_collections.ConfigDict, workdir: str, step: Optional[int] = None):
    """Restores a checkpoint (latest by default) for evaluation: ``(trainer, state, step,
    skipped)``, ``skipped`` the newer checkpoints that failed verification and were passed
    over (:class:`msvision.checkpoint.SkippedCheckpoint`, logged).

    Checks that the checkpoint exists before building anything, initialises
    multi-process mode like :func:`train`, and reads only the validation split (the
    class list comes from ``WORKDIR/dataset.json``, written at training time, or from
    the validation annotations).
    """
    # No checkpoint at all: one clear error, before anything is built.
    checkpoint_lib.find_checkpoint_step(workdir, step)
    step, skipped = checkpoint_lib.select_checkpoint(os.path.abspath(os.path.join(workdir, "checkpoints")), step)
    enable_compilation_cache()
    sharding_lib.initialize_distributed()
    dataset_info = data_lib.eval_dataset_info(config.data, workdir)
    trainer = build_trainer(config, dataset_info)
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=0)
    step, state, _ = ckpt.restore(checkpoint_lib.abstract_like(trainer.state), step=step)
    ckpt.close()
    return trainer, state, step, skipped
