"""Lower a config's sharded train step and inference function for CUDA or TPU, without the hardware.

``python -m msvision.analysis --config=C --lower-for=cuda --devices=8 --json`` traces
the functions ``train.py`` runs — the train step (forward, backward, optimizer update
with the config's own optimizer) and the predict step, jitted by
:func:`msvision.train.loop.jit_sharded_steps` with the same data-parallel
``in_shardings``/``out_shardings`` and donation over a mesh of N (forced CPU)
devices — and lowers them to StableHLO for the target platform with
``jax.jit(...).trace(...).lower(lowering_platforms=(platform,))``. The model is
built abstractly (``nnx.eval_shape``), so full-size configs lower without allocating
a weight; nothing is compiled.

Code paths follow the lowering platform, not this machine's backend
(``lax.platform_dependent``): for CUDA the MSDA Pallas Triton kernels
(``msvision.ops.msda.auto``) and XLA's own convolution kernel gradients (the
CPU-only im2col gradient of ``msvision.ops.conv`` is not lowered); for TPU the XLA
MSDA; for the CPU the native MSDA kernel's custom calls (``msvision_msda_cpu_*``)
when it is available on this host, else the XLA MSDA. The report lists the custom-call targets found in each module, so a reader
sees which kernels a GPU would run.

What a successful lowering proves: every primitive has a lowering rule for the
platform, shapes and shardings are consistent on N devices, the Pallas kernels
produce Triton IR. What it does not: that XLA:GPU/TPU compiles the module (memory,
Triton compilation, SPMD partitioning happen at compile time), nor that anything
runs correctly or fast.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from msvision import config_sections
from msvision.analysis.cost import _abstract, abstract_model, synthetic_batch
from msvision.ops import platforms
from msvision.train import sharding as sharding_lib

PLATFORMS = ("cuda", "rocm", "tpu", "cpu")
TRITON_TARGET = "__gpu$xla.gpu.triton"

_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call @([\w$.\-]+)")
_TRITON_NAME = re.compile(r'name = \\?"(\w+)\\?"')
_NUM_PARTITIONS = re.compile(r"mhlo\.num_partitions = (\d+)")
_FUNC = re.compile(r"^  func\.func ", re.M)
_FUNC_NAME = re.compile(r"(?:public |private )?@([\w$.\-]+)")
_CALL = re.compile(r"\bcall @([\w$.\-]+)\(")  # func.call; not custom_call (no word boundary after "_")


def force_cpu_devices(num_devices: int) -> None:
    """Asks JAX for ``num_devices`` CPU devices; only possible before JAX's first use.

    Once the backends exist this passes if they already have that many CPU devices.
    """
    try:
        jax.config.update("jax_num_cpu_devices", int(num_devices))
    except RuntimeError:  # backends already initialised
        if len(jax.devices("cpu")) < num_devices:
            raise


def module_summary(text: str) -> dict:
    """Custom-call targets, Triton kernel names, convolutions and partitions of a lowered module.

    ``text``: ``Lowered.as_text()`` (StableHLO). Pallas Triton kernels appear as
    ``custom_call @__gpu$xla.gpu.triton`` whose backend config names the kernel.
    Counts are per execution of ``main``: JAX emits one private function for
    identical sub-computations (e.g. the layers of an encoder) and calls it several
    times, so each function's ops are multiplied by its number of calls. A loop body
    (``lax.scan``, ``remat`` layers) counts once.
    """
    functions: dict[str, tuple[Counter, Counter]] = {}
    for chunk in _FUNC.split(text)[1:]:
        name = _FUNC_NAME.match(chunk).group(1)
        ops: Counter = Counter(f"custom_call:{t}" for t in _CUSTOM_CALL.findall(chunk))
        for line in chunk.splitlines():
            if TRITON_TARGET in line and "custom_call" in line:
                match = _TRITON_NAME.search(line)
                ops[f"triton:{match.group(1) if match else '?'}"] += 1
        ops["convolution"] = chunk.count("stablehlo.convolution")
        functions[name] = (ops, Counter(_CALL.findall(chunk)))

    totals: dict[str, Counter] = {}

    def total(name: str) -> Counter:
        if name not in totals:
            ops, callees = functions.get(name, (Counter(), Counter()))
            result = Counter(ops)
            for callee, times in callees.items():
                for key, n in total(callee).items():
                    result[key] += times * n
            totals[name] = result
        return totals[name]

    counts = total("main")
    partitions = _NUM_PARTITIONS.search(text)
    # Convolutions tell the kernel-gradient paths apart: XLA's own (a convolution per
    # gradient) outside the CPU, matmuls of im2col windows on the CPU (ops/conv_xla.py).
    return dict(
        custom_calls={k.split(":", 1)[1]: n for k, n in sorted(counts.items()) if k.startswith("custom_call:") and n},
        triton_kernels={k.split(":", 1)[1]: n for k, n in sorted(counts.items()) if k.startswith("triton:") and n},
        convolutions=counts["convolution"],
        num_partitions=int(partitions.group(1)) if partitions else 1,
    )


def _lower(jitted, args, platform: str) -> dict:
    start = time.perf_counter()
    try:
        with platforms.tracing_for((platform,)):  # that platform's kernels (msvision.ops.platforms)
            text = jitted.trace(*args).lower(lowering_platforms=(platform,)).as_text()
    except Exception as error:  # reported, not raised: the CLI prints it and exits non-zero
        return dict(ok=False, error=f"{type(error).__name__}: {error}", lowering_s=time.perf_counter() - start)
    result = dict(ok=True, lowering_s=time.perf_counter() - start)
    result.update(module_summary(text))
    return result


def lower_config(
    config: ml_collections.ConfigDict,
    platform: str,
    *,
    num_devices: Optional[int] = None,
    batch_size: Optional[int] = None,
    image_size: int = 800,
    num_objects: int = 10,
) -> dict:
    """Lowers ``config``'s sharded train step and predict step for ``platform``; the ``lowering`` report.

    Args:
      config: a run config (``model``, and ``optim`` for the config's optimizer; the
        sections it does not set take their defaults, :mod:`msvision.config_sections`).
      platform: one of ``PLATFORMS``.
      num_devices: mesh size (default: all CPU devices); must not exceed ``len(jax.devices("cpu"))``
        (forced CPU devices: :func:`force_cpu_devices` before JAX's first use).
      batch_size: global batch (default: 2 images per device, as the thesis's 8 GPUs × 2).
      image_size, num_objects: the synthetic input (thesis section 2.3: 800×800, 10 objects).

    Returns:
      ``{platform, devices, batch_size, image_size, train_ok, inference_ok, custom_calls:
      {train, inference}, triton_kernels, convolutions, num_partitions, lowering_s (each
      per function: {train, inference}), errors}`` (``errors`` only when something failed).
    """
    from msvision.train import optimizer as optimizer_lib
    from msvision.train.loop import jit_sharded_steps

    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}, got {platform!r}")
    # The mesh is always of CPU devices: the lowering check needs no accelerator, and on
    # an accelerator host the CPU backend still provides (forced) devices.
    devices = jax.devices("cpu")
    num_devices = len(devices) if num_devices is None else int(num_devices)
    if num_devices > len(devices):
        raise ValueError(f"{num_devices} devices requested, JAX has {len(devices)} CPU devices: force them with "
                         "jax.config.update('jax_num_cpu_devices', N) before JAX's first use")
    mesh = sharding_lib.make_mesh(devices[:num_devices])
    batch_size = 2 * num_devices if batch_size is None else int(batch_size)
    sharding_lib.check_batch_size(batch_size, mesh)

    config = config_sections.resolve_config(config)
    model = abstract_model(config.model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = _abstract(params), _abstract(rest)
    optim_cfg = config.optim
    tx, schedules = optimizer_lib.build_optimizer(optim_cfg, params, steps_per_epoch=1000)

    def make_state(params, rest):
        return dict(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                    rng=jax.random.PRNGKey(0))

    state = jax.eval_shape(make_state, params, rest)
    with_masks = config.model.seg_head.name != "none"
    batch = _abstract(synthetic_batch(batch_size, image_size, num_objects, config.model.num_classes,
                                      with_masks=with_masks))
    train_step, predict_step = jit_sharded_steps(graphdef, tx, schedules, mesh, state,
                                                 frozen_parts=tuple(optim_cfg.frozen_parts))

    results = {
        "train": _lower(train_step, (state, batch), platform),
        "inference": _lower(predict_step, (state["params"], state["rest"], batch), platform),
    }
    report: dict[str, Any] = dict(platform=platform, devices=num_devices, batch_size=batch_size,
                                  image_size=image_size)
    for key, result in results.items():
        report[f"{key}_ok"] = result["ok"]
    report["custom_calls"] = {k: r.get("custom_calls") for k, r in results.items()}
    report["triton_kernels"] = {k: r.get("triton_kernels") for k, r in results.items()}
    report["num_partitions"] = {k: r.get("num_partitions") for k, r in results.items()}
    report["convolutions"] = {k: r.get("convolutions") for k, r in results.items()}
    report["lowering_s"] = {k: round(r["lowering_s"], 3) for k, r in results.items()}
    errors = {k: r["error"] for k, r in results.items() if not r["ok"]}
    if errors:
        report["errors"] = errors
    return report
