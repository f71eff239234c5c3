"""Cost of the padding-aware layers: train step time and planned memory, same run.

Every backbone, neck and head layer is padding-aware (``msvision/ops/padding.py``):
k×k convolutions see zeros outside each image's valid cells, GroupNorm statistics
are taken over valid cells, resizing maps valid maps onto valid maps per image. This
script times the same train step with and without it: "without" passes no image
sizes to the backbone and the neck (the padded canvas is treated as image; the
heads keep their anchor validity, whose cost is negligible), which is what the
code did before. Both run in this process, alternately, on the same batches.

    python benchmarks/bench_padding_cost.py [--config configs/retinanet/quickstart_tpn.py] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.analysis.cost import synthetic_batch
from msvision.config_sections import load_config
from msvision.models.build import build_model
from msvision.models.detector import Detector
from msvision.train.loop import make_train_step
from msvision.train.optimizer import build_optimizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def unaware_pyramid(self, batch, rng=None):
    """``Detector.pyramid`` without image sizes (the canvas is the image)."""
    return self.neck(self.backbone(self.normalize_images(batch), rng=rng))


def compiled_step(config, batch, aware: bool):
    original = Detector.pyramid
    if not aware:
        Detector.pyramid = unaware_pyramid
    try:
        model = build_model(config.model, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx, schedules = build_optimizer(config.optim, params, steps_per_epoch=1000)
        state = dict(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                 rng=jax.random.PRNGKey(0))
        compiled = jax.jit(make_train_step(graphdef, tx, schedules)).lower(state, batch).compile()
    finally:
        Detector.pyramid = original
    memory = compiled.memory_analysis()
    return compiled, state, memory.temp_size_in_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(ROOT, "configs/retinanet/quickstart_tpn.py"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = load_config(args.config)
    config.model.num_classes = 5
    batch = jax.device_put(synthetic_batch(args.batch_size, args.image_size, 10, config.model.num_classes))
    steps = {name: compiled_step(config, batch, aware) for name, aware in (("aware", True), ("unaware", False))}
    times = {name: [] for name in steps}
    for name, (fn, state, _) in steps.items():  # warm-up
        jax.block_until_ready(fn(state, batch))
    for _ in range(args.repeats):
        for name, (fn, state, _) in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, batch))
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"config {os.path.relpath(args.config, ROOT)}, batch {args.batch_size}×{args.image_size}², "
          f"jax {jax.__version__}, {os.cpu_count()} threads, load average {os.getloadavg()[0]:.2f}")
    print("| layers | train step (s, median of %d) | planned temporaries (MiB) |" % args.repeats)
    print("| --- | --- | --- |")
    for name in ("unaware", "aware"):
        print(f"| padding-{name} | {med[name]:.3f} | {steps[name][2] / 2**20:.0f} |")
    print(f"padding-aware / unaware: time {med['aware'] / med['unaware']:.2f}×, "
          f"memory {steps['aware'][2] / steps['unaware'][2]:.2f}×")


if __name__ == "__main__":
    main()
