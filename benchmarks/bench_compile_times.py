"""Compile time of every thesis config's train step (and inference) on this machine's CPU.

    JAX_PLATFORMS=cpu python benchmarks/bench_compile_times.py [CONFIG ...] [--no-inference] [--append FILE]

For each config (default: every ``configs/**/*.py`` except the quickstarts), a fresh
process traces, lowers and compiles the train step ``train.py`` jits (forward,
backward, AdamW update; batch of two 800×800 images with ten objects, one device)
and ``predict``, as :func:`msvision.analysis.cost.compile_times` does, and prints a
Markdown table: seconds to trace + lower, to compile, and their sum, and whether the
train step's total is under the 60 s budget (``BUDGET_S``). One process per config so
that no config inherits another's compilation caches or memory.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUDGET_S = 60.0


def thesis_configs() -> list[str]:
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))
    return [os.path.relpath(p, ROOT) for p in paths if not os.path.basename(p).startswith("quickstart")]


def measure_one(config_path: str, inference: bool) -> dict:
    """Runs in the child process."""
    sys.path.insert(0, ROOT)
    from msvision.analysis.cost import compile_times
    from msvision.config_sections import load_config

    config = load_config(os.path.join(ROOT, config_path), [])
    return compile_times(config.model, inference=inference)


def _environment() -> str:
    import jax
    import jaxlib

    load = os.getloadavg()[0]
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, jax {jax.__version__} / jaxlib "
            f"{jaxlib.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, load average at start {load:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help="config files relative to the repository (default: thesis configs)")
    parser.add_argument("--no-inference", action="store_true", help="train step only")
    parser.add_argument("--append", default="", help="append the Markdown table to this file")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, not args.no_inference)))
        return 0

    configs = args.configs or thesis_configs()
    lines = [_environment(), "",
             "| config | train trace+lower s | train compile s | train total s | < 60 s | inference total s |",
             "| --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines), flush=True)
    over = 0
    for path in configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", path] + (["--no-inference"] if args.no_inference else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            error = (proc.stderr.strip().splitlines() or ["?"])[-1][:150].replace("|", "\\|")
            row = f"| {path} | FAILED: {error} | | | | |"
        else:
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            train = r["train"]
            ok = train["total_s"] < BUDGET_S
            over += not ok
            inference = f"{r['inference']['total_s']:.1f}" if "inference" in r else "—"
            row = (f"| {path} | {train['lower_s']:.1f} | {train['compile_s']:.1f} | {train['total_s']:.1f} | "
                   f"{'yes' if ok else '**no**'} | {inference} |")
        print(row, flush=True)
        lines.append(row)
    footer = f"\n{len(configs) - over} of {len(configs)} train steps within {BUDGET_S:.0f} s; load average at end {os.getloadavg()[0]:.2f}."
    print(footer)
    lines.append(footer)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
