"""Cost metrics of a model config (thesis section 2.3): Params, FLOPs, FPS, memory.

- Params from abstract shapes (``nnx.eval_shape``): ``trainable`` = ``nnx.Param``,
  ``frozen`` = ``Frozen`` weights; ``total`` = both (as ``sum(p.numel() for p in
  model.parameters())`` in torch). BatchNorm running statistics (``FrozenStat``)
  and loss normalisers are buffers, reported separately, not counted.
- FLOPs reported as multiply-accumulates, as the thesis (detectron2's counter):
  ``compiled.cost_analysis()['flops'] / 2`` of the jitted inference (``predict``) and
  train step (forward + backward + AdamW update). XLA also counts elementwise ops
  (one flop each) that detectron2 ignores, so expect a small surplus over
  detectron2's numbers; convolutions and matmuls dominate.
  XLA counts the body of a loop once, so for a model with rematerialized layers
  (``model.neck.remat``: a ``lax.scan``) the FLOPs come from a second compile with
  ``remat=False`` (same arithmetic, without the recomputation); memory and timing
  come from the model as configured.
- Compile time, latency and images/s on the current machine (a train step that
  runs out of memory is reported as ``train.error``, with XLA's plan), peak device memory
  when the backend reports it (``device.memory_stats()``; "n/a" on CPU), and XLA's
  ``memory_analysis()`` (argument / output / temp bytes) of each executable.

Default input is the thesis's: a batch of two 800×800 images with ten objects each.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from msvision.models.abstract import abstract_init
from msvision.models.build import build_model, resolve_model_config
from msvision.models.detector import Detector
from msvision.models.layers import Frozen, FrozenStat, count_variables
from msvision.structures import Batch


MODEL_PARTS = ("backbone", "neck", "head", "seg_head")


def count_parameters(model: Detector) -> dict:
    """``{'total', 'trainable', 'frozen', 'buffers'}`` scalars of a (possibly abstract) detector, and
    ``trainable_by_part``: the trainable parameters of each of its parts (``backbone``, ``neck``,
    ``head`` and, when present, ``seg_head``: thesis table 5.4's "head alone" counts)."""
    trainable = count_variables(model, nnx.Param)
    frozen = count_variables(model, Frozen, exclude=(FrozenStat,))
    everything = count_variables(model, nnx.Variable)
    parts = {name: count_variables(getattr(model, name), nnx.Param) for name in MODEL_PARTS
             if getattr(model, name) is not None}
    return dict(total=trainable + frozen, trainable=trainable, frozen=frozen, buffers=everything - trainable - frozen,
                trainable_by_part=parts)


def abstract_model(model_cfg: ml_collections.ConfigDict) -> nnx.Module:
    """The model with ``ShapeDtypeStruct`` leaves (nothing allocated). Skips ``pretrained``."""
    cfg = _without_pretrained(model_cfg)
    return abstract_init(lambda: build_model(cfg, rngs=nnx.Rngs(0)))


def _without_remat(model_cfg) -> Optional[ml_collections.ConfigDict]:
    """A copy of ``model_cfg`` with ``neck.remat`` off, or None when it is not on (or the
    neck has no such option)."""
    cfg = resolve_model_config(model_cfg)
    if not ("remat" in cfg.neck and cfg.neck.remat):
        return None
    cfg.neck.remat = False
    return cfg


def _without_pretrained(model_cfg):
    cfg = resolve_model_config(model_cfg)
    cfg.backbone.pretrained = ""
    return cfg


def synthetic_batch(
    batch_size: int = 2, image_size: int = 800, num_objects: int = 10, num_classes: int = 80, seed: int = 0,
    with_masks: bool = False,
) -> Batch:
    """A numpy :class:`Batch` of random square images with ``num_objects`` random boxes each
    (and, ``with_masks``, the ellipse inscribed in each box as its mask)."""
    rng = np.random.default_rng(seed)
    b, s, m = batch_size, image_size, num_objects
    xy0 = rng.uniform(0, 0.7 * s, (b, m, 2))
    wh = rng.uniform(0.05 * s, 0.3 * s, (b, m, 2))
    boxes = np.concatenate([xy0, np.minimum(xy0 + wh, s)], axis=-1).astype(np.float32)
    masks = None
    if with_masks:
        yy, xx = np.mgrid[:s, :s].astype(np.float32) + 0.5
        c = (boxes[..., :2] + boxes[..., 2:]) / 2
        r = np.maximum((boxes[..., 2:] - boxes[..., :2]) / 2, 1.0)
        masks = (((xx - c[..., 0, None, None]) / r[..., 0, None, None]) ** 2
                 + ((yy - c[..., 1, None, None]) / r[..., 1, None, None]) ** 2) <= 1.0
    return Batch(
        masks=masks,
        images=rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
        image_sizes=np.full((b, 2), s, np.int32),
        orig_sizes=np.full((b, 2), s, np.int32),
        image_ids=np.arange(b, dtype=np.int32),
        boxes=boxes,
        labels=rng.integers(0, max(num_classes, 1), (b, m)).astype(np.int32),
        valid=np.ones((b, m), bool),
        is_crowd=np.zeros((b, m), bool),
    )


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def make_predict_fn(graphdef) -> Callable:
    def predict(params, rest, batch):
        return nnx.merge(graphdef, params, rest).predict(batch)

    return predict


def _cost_dict(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    cost = cost or {}
    out = {"flops": float(cost.get("flops", float("nan")))}
    out["macs"] = out["flops"] / 2
    mem = None
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        pass
    for name in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "generated_code_size_in_bytes"):
        out[name.removesuffix("_in_bytes")] = int(getattr(mem, name)) if mem is not None else None
    return out


def compile_cost(fn: Callable, *args, donate_argnums=()) -> tuple[Any, dict]:
    """``jax.jit(fn).lower(*args).compile()`` plus its cost dict (with ``compile_s``).

    Traced with the IdConv taps unrolled (:func:`msvision.ops.sps.id_conv.unrolled_taps`;
    rematerialised layers stay a scan): XLA's cost analysis counts a while loop's body
    once, so a ``lax.scan`` hides all but one of its iterations' MACs; the compiled
    function is the one counted.
    """
    from msvision.ops.sps.id_conv import unrolled_taps

    t0 = time.perf_counter()
    with unrolled_taps():
        lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
    compiled = lowered.compile()
    info = _cost_dict(compiled)
    info["compile_s"] = time.perf_counter() - t0
    return compiled, info


class AbstractSteps(NamedTuple):
    """The jitted functions ``train.py`` runs, with abstract arguments (nothing allocated)."""

    graphdef: Any
    tx: Any
    schedules: Any
    make_state: Callable
    batch: Batch  # numpy, for timing
    abs_params: Any
    abs_rest: Any
    abs_batch: Any
    abs_state: Any
    predict_fn: Callable  # (params, rest, batch) -> predictions
    train_fn: Callable  # (state, batch) -> (state, metrics)


def abstract_steps(model_cfg: ml_collections.ConfigDict, model: Optional[nnx.Module] = None, batch_size: int = 2,
                   image_size: int = 800, num_objects: int = 10) -> AbstractSteps:
    """Predict and train-step functions of ``model_cfg`` (msvision.train's step and AdamW with
    parameter groups) and abstract arguments for them, on a :func:`synthetic_batch`."""
    from msvision.train.loop import make_train_step
    from msvision.train.optimizer import build_optimizer, default_optim_config

    model = abstract_model(model_cfg) if model is None else model
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    with_masks = resolve_model_config(model_cfg).seg_head.name != "none"
    batch = synthetic_batch(batch_size, image_size, num_objects, model_cfg.num_classes, with_masks=with_masks)
    tx, schedules = build_optimizer(default_optim_config(), params, steps_per_epoch=1000)
    abs_params, abs_rest, abs_batch = _abstract(params), _abstract(rest), _abstract(batch)

    def make_state(params, rest):
        return dict(
            step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
            rng=jax.random.PRNGKey(0),
        )

    abs_state = jax.eval_shape(make_state, abs_params, abs_rest)
    return AbstractSteps(graphdef, tx, schedules, make_state, batch, abs_params, abs_rest, abs_batch, abs_state,
                         make_predict_fn(graphdef), make_train_step(graphdef, tx, schedules))


def compile_times(model_cfg: ml_collections.ConfigDict, *, batch_size: int = 2, image_size: int = 800,
                  num_objects: int = 10, inference: bool = True) -> dict:
    """Seconds to trace + lower and to compile the production train step (and ``predict``).

    Unlike :func:`compile_cost`, traced as ``train.py`` traces it (IdConv taps in their
    ``lax.scan``, layers rematerialised as configured), so the times are what a user
    waits before the first step. Returns ``{'train': {'lower_s', 'compile_s', 'total_s'},
    'inference': {...}}``.
    """
    steps = abstract_steps(model_cfg, None, batch_size, image_size, num_objects)
    jobs = [("train", steps.train_fn, (steps.abs_state, steps.abs_batch), (0,))]
    if inference:
        jobs.append(("inference", steps.predict_fn, (steps.abs_params, steps.abs_rest, steps.abs_batch), ()))
    report = {}
    for key, fn, args, donate in jobs:
        t0 = time.perf_counter()
        lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        report[key] = dict(lower_s=t1 - t0, compile_s=t2 - t1, total_s=t2 - t0)
    return report


def _peak_memory() -> Optional[int]:
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0))) or None


def _time(run: Callable, iterations: int) -> float:
    jax.block_until_ready(run())  # warm-up
    t0 = time.perf_counter()
    for _ in range(iterations):
        out = run()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iterations


def analyse(
    model_cfg: ml_collections.ConfigDict,
    *,
    batch_size: int = 2,
    image_size: int = 800,
    num_objects: int = 10,
    skip_timing: bool = False,
    iterations: int = 3,
) -> dict:
    """All cost metrics of ``model_cfg`` on a synthetic batch (see module docstring)."""
    report: dict[str, Any] = {
        "input": dict(batch_size=batch_size, image_size=image_size, num_objects=num_objects),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
    }
    from msvision.train.loop import make_train_step

    model = abstract_model(model_cfg)
    report["params"] = count_parameters(model)
    steps = abstract_steps(model_cfg, model, batch_size, image_size, num_objects)
    tx, schedules, make_state, batch = steps.tx, steps.schedules, steps.make_state, steps.batch
    abs_params, abs_rest, abs_batch, abs_state = steps.abs_params, steps.abs_rest, steps.abs_batch, steps.abs_state
    predict_fn, train_fn = steps.predict_fn, steps.train_fn
    predict_c, report["inference"] = compile_cost(predict_fn, abs_params, abs_rest, abs_batch)
    train_c, report["train"] = compile_cost(train_fn, abs_state, abs_batch, donate_argnums=(0,))
    unrolled_cfg = _without_remat(model_cfg)
    if unrolled_cfg is not None:  # the FLOPs of the unrolled layers (see module docstring)
        unrolled_graphdef = nnx.split(abstract_model(unrolled_cfg), nnx.Param, ...)[0]
        for key, fn, args in (
            ("inference", make_predict_fn(unrolled_graphdef), (abs_params, abs_rest, abs_batch)),
            ("train", make_train_step(unrolled_graphdef, tx, schedules), (abs_state, abs_batch)),
        ):
            _, unrolled = compile_cost(fn, *args)
            report[key].update(flops=unrolled["flops"], macs=unrolled["macs"], flops_from="remat=False")
    if skip_timing:
        return report

    real = build_model(model_cfg, rngs=nnx.Rngs(0))
    _, params, rest = nnx.split(real, nnx.Param, ...)
    del real
    dev_batch = jax.device_put(batch)
    dt = _time(lambda: predict_c(params, rest, dev_batch), iterations)
    report["inference"].update(latency_s=dt, images_per_s=batch_size / dt, peak_memory_bytes=_peak_memory())

    state = [make_state(params, rest)]

    def train_once():
        state[0], metrics = train_c(state[0], dev_batch)
        return metrics["train/loss"]

    try:
        dt = _time(train_once, iterations)
    except jax.errors.JaxRuntimeError as err:  # keep the rest of the report (e.g. Swin-L's train step on the CPU)
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        report["train"]["error"] = f"not run: {str(err).splitlines()[0]}"
        return report
    report["train"].update(latency_s=dt, images_per_s=batch_size / dt, peak_memory_bytes=_peak_memory())
    return report


def _fmt_count(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else str(n)


def _fmt_bytes(n) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def format_report(report: dict) -> str:
    """A human-readable table."""
    p = report["params"]
    inp = report["input"]
    lines = [
        f"input: batch {inp['batch_size']} × {inp['image_size']}×{inp['image_size']}, "
        f"{inp['num_objects']} objects/image; backend {report['backend']} ({report['device']})",
        f"Params       total {_fmt_count(p['total'])}  (trainable {_fmt_count(p['trainable'])}, "
        f"frozen {_fmt_count(p['frozen'])}; buffers {_fmt_count(p['buffers'])} not counted)",
        "Trainable    " + ", ".join(f"{k} {_fmt_count(v)}" for k, v in p.get("trainable_by_part", {}).items()),
        "",
        f"{'':22s}{'inference':>16s}{'train step':>16s}",
    ]
    inf, tr = report["inference"], report["train"]
    rows = [
        ("FLOPs (GMACs)", lambda r: f"{r['macs'] / 1e9:.1f}" if r["macs"] >= 1e9 else f"{r['macs'] / 1e9:.4f}"),
        ("compile time (s)", lambda r: f"{r['compile_s']:.1f}"),
        ("latency (ms)", lambda r: f"{r['latency_s'] * 1e3:.1f}" if "latency_s" in r else "skipped"),
        ("images/s", lambda r: f"{r['images_per_s']:.2f}" if "images_per_s" in r else "skipped"),
        ("peak memory", lambda r: _fmt_bytes(r.get("peak_memory_bytes")) if "latency_s" in r else "skipped"),
        ("XLA argument size", lambda r: _fmt_bytes(r["argument_size"])),
        ("XLA output size", lambda r: _fmt_bytes(r["output_size"])),
        ("XLA temp size", lambda r: _fmt_bytes(r["temp_size"])),
    ]
    for name, fmt in rows:
        lines.append(f"{name:22s}{fmt(inf):>16s}{fmt(tr):>16s}")
    lines.append("FLOPs are multiply-accumulates (XLA flops / 2), as the thesis reports them.")
    return "\n".join(lines)
