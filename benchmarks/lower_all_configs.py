"""Lower every config in ``configs/`` (full size) for CUDA on 8 devices and for TPU; a Markdown table.

    python benchmarks/lower_all_configs.py [--devices 8] [--platforms cuda tpu] [--json-out FILE]

For each config and platform, :func:`msvision.analysis.lowering.lower_config` traces
the sharded train step (forward, backward, the config's optimizer update) and the
predict step that ``train.py`` jits, on a mesh of N forced CPU devices with a global
batch of 2 images per device at 800×800, and lowers them to StableHLO for the
platform (nothing is compiled). Prints one row per config and platform: train and
inference ok or the error, custom-call targets (Triton kernel names for CUDA),
number of partitions and lowering time (trace + lower, seconds).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _calls(lowering: dict, key: str) -> str:
    if not lowering[f"{key}_ok"]:
        return "—"
    kernels = lowering["triton_kernels"][key]
    calls = {k: v for k, v in lowering["custom_calls"][key].items() if k != "__gpu$xla.gpu.triton"}
    parts = [f"triton {name}×{n}" for name, n in kernels.items()] + [f"{k}×{n}" for k, n in calls.items()]
    return ", ".join(parts) or "none"


def _status(lowering: dict, key: str) -> str:
    if lowering[f"{key}_ok"]:
        return "ok"
    return "FAILED: " + lowering["errors"][key].replace("|", "\\|").splitlines()[0][:200]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--platforms", nargs="+", default=["cuda", "tpu"])
    parser.add_argument("--image-size", type=int, default=800)
    parser.add_argument("--json-out", default="")
    parser.add_argument("configs", nargs="*", help="config files (default: every configs/**/*.py)")
    args = parser.parse_args()

    from msvision.analysis.lowering import force_cpu_devices, lower_config

    force_cpu_devices(args.devices)  # before JAX's first use
    from msvision.config_sections import load_config

    paths = args.configs or sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))
    print(f"jax {jax.__version__}, {len(jax.devices('cpu'))} forced CPU devices, "
          f"batch {2 * args.devices} × {args.image_size}², platforms {args.platforms}", file=sys.stderr)
    print("| config | platform | train | inference | custom calls: train | custom calls: inference "
          "| partitions | lowering s (train + inference) |")
    print("|---|---|---|---|---|---|---|---|")
    rows, failed = [], 0
    for path in paths:
        name = os.path.relpath(path, ROOT)
        config = load_config(path)
        for platform in args.platforms:
            start = time.perf_counter()
            try:
                lowering = lower_config(config, platform, num_devices=args.devices, image_size=args.image_size)
            except Exception as error:  # building the model or the optimizer failed
                lowering = dict(platform=platform, train_ok=False, inference_ok=False,
                                errors={k: f"{type(error).__name__}: {error}" for k in ("train", "inference")},
                                num_partitions={}, lowering_s={}, custom_calls={}, triton_kernels={})
            failed += not (lowering["train_ok"] and lowering["inference_ok"])
            times = lowering["lowering_s"]
            partitions = sorted({p for p in lowering["num_partitions"].values() if p is not None})
            print(f"| {name} | {platform} | {_status(lowering, 'train')} | {_status(lowering, 'inference')} "
                  f"| {_calls(lowering, 'train')} | {_calls(lowering, 'inference')} "
                  f"| {', '.join(map(str, partitions)) or '—'} "
                  f"| {times.get('train', 0):.1f} + {times.get('inference', 0):.1f} |", flush=True)
            rows.append(dict(config=name, total_s=time.perf_counter() - start, **lowering))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
