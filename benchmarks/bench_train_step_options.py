"""CPU train-step time of one config with the compile-time options on or off.

    JAX_PLATFORMS=cpu python benchmarks/bench_train_step_options.py CONFIG SCAN FLATTEN [--steps N]

SCAN (0/1) sets the backbone's ``scan_blocks`` and, for TPN and BiFPN necks, the neck's
``scan_layers``; FLATTEN (0/1) sets ``optim.flatten`` (see ``msvision.models.layers.scan_layers``
and ``msvision.train.optimizer.flattened``). Builds the model with random weights, jits the train
step ``train.py`` runs on a synthetic batch of two 800×800 images with ten objects, runs one
warm-up step and prints the sorted times of ``--steps`` more as JSON. Run the settings one after
the other on a quiet machine and compare (benchmarks/RESULTS.md, "Compile time").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("scan", type=int, choices=(0, 1))
    parser.add_argument("flatten", type=int, choices=(0, 1))
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import jax
    from flax import nnx

    from msvision.analysis import cost
    from msvision.config import load_config
    from msvision.models.build import build_model
    from msvision.train import optimizer

    config = load_config(args.config, [])
    with config.unlocked():
        config.model.backbone.scan_blocks = bool(args.scan)
        if config.model.neck.name in ("tpn", "bifpn"):
            config.model.neck.scan_layers = bool(args.scan)
    default_optim = optimizer.default_optim_config

    def optim_config():
        cfg = default_optim()
        cfg.flatten = bool(args.flatten)
        return cfg

    optimizer.default_optim_config = optim_config  # what cost.abstract_steps builds its AdamW from
    steps = cost.abstract_steps(config.model, None, 2, 800, 10)
    _, params, rest = nnx.split(build_model(config.model, rngs=nnx.Rngs(0)), nnx.Param, ...)
    state = steps.make_state(params, rest)
    batch = jax.device_put(steps.batch)
    train_step = jax.jit(steps.train_fn, donate_argnums=(0,))
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    print(json.dumps(dict(config=os.path.relpath(os.path.abspath(args.config), ROOT), scan=bool(args.scan),
                          flatten=bool(args.flatten), step_s=[round(t, 3) for t in sorted(times)])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
