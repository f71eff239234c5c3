"""Cost of the nine thesis table 3.1 configurations (R50/R101 + neck + RetinaNet).

For each config: Params (trainable, as the thesis counts them; from abstract shapes),
inference and training FLOPs (MACs, XLA cost analysis of the jitted ``predict`` and
train step) on two 800×800 images with ten objects each, and — unless
``--skip-timing`` — CPU latency of both (random weights). Uses
:func:`msvision.analysis.cost.analyse`, the functions behind
``python -m msvision.analysis``.

Results are appended one config at a time to a JSON-lines file (a full-size compile
takes minutes on a small CPU machine, so partial runs keep what they measured), and
``--markdown`` renders that file as the table of ``benchmarks/RESULTS.md``.

    python benchmarks/bench_necks.py --params-only
    python benchmarks/bench_necks.py --configs r50_tpn_L3B2 --skip-timing --out /tmp/necks.jsonl
    python benchmarks/bench_necks.py --markdown --out /tmp/necks.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
from flax import nnx

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from msvision.config_sections import load_config  # noqa: E402
from msvision.models.build import build_model  # noqa: E402
from msvision.models.abstract import abstract_init  # noqa: E402

CONFIGS = {  # name: (table 3.1 params in M, tFPS, iFPS on a GTX 1660 Ti)
    "r50_tpn_L1B7": (36.3, 1.7, 5.3),
    "r50_tpn_L2B3": (36.2, 1.7, 5.5),
    "r50_tpn_L3B2": (36.7, 1.6, 5.3),
    "r50_tpn_L5B1": (37.1, 1.6, 5.3),
    "r50_bifpn_L7": (34.7, 1.8, 6.0),
    "r50_bfpn_B14": (36.1, 1.7, 5.4),
    "r50_hfpn_B14": (36.1, 1.7, 5.4),
    "r101_fpn_C4": (55.1, 1.4, 4.1),
    "r101_tpn_L1B2": (51.7, 1.6, 4.6),
}


def params_only(name: str) -> dict:
    from msvision.analysis.cost import count_parameters

    cfg = load_config(os.path.join(ROOT, "configs", "retinanet", name + ".py"))
    model = abstract_init(lambda: build_model(cfg.model, rngs=nnx.Rngs(0)))
    out = {"params": count_parameters(model)}
    out["params"]["neck"] = sum(
        int(v.size) for _, v in nnx.to_flat_state(nnx.state(model.neck, nnx.Param))
    )
    return out


def run(name: str, skip_timing: bool, iterations: int) -> dict:
    from msvision.analysis.cost import analyse

    cfg = load_config(os.path.join(ROOT, "configs", "retinanet", name + ".py"))
    return analyse(cfg.model, skip_timing=skip_timing, iterations=iterations)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| config | Params (ours) | Params (table 3.1) | inference GMACs | train GMACs | "
        "inference latency CPU (s) | train step latency CPU (s) | compile inf./train (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table = CONFIGS[r["name"]][0]
        p = r["params"]["trainable"]
        inf, tr = r.get("inference", {}), r.get("train", {})

        def g(d, key, scale=1.0, fmt="{:.1f}"):
            return fmt.format(d[key] / scale) if key in d and d[key] is not None else "–"

        lines.append(
            f"| {r['name']} | {p / 1e6:.2f} M | {table} M | {g(inf, 'macs', 1e9)} | {g(tr, 'macs', 1e9)} | "
            f"{g(inf, 'latency_s', fmt='{:.2f}')} | {g(tr, 'latency_s', fmt='{:.2f}')} | "
            f"{g(inf, 'compile_s', fmt='{:.0f}')} / {g(tr, 'compile_s', fmt='{:.0f}')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), help="names without .py")
    parser.add_argument("--params-only", action="store_true", help="parameter counts only (no compile)")
    parser.add_argument("--skip-timing", action="store_true", help="params + FLOPs (compiles, no execution)")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--out", default="", help="JSON-lines file to append results to")
    parser.add_argument("--markdown", action="store_true", help="render --out as a markdown table")
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.out) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        print(markdown(rows))
        return 0
    for name in args.configs:
        t0 = time.perf_counter()
        result = params_only(name) if args.params_only else run(name, args.skip_timing, args.iterations)
        result.update(name=name, wall_s=time.perf_counter() - t0, backend=jax.default_backend())
        table = CONFIGS[name][0]
        p = result["params"]["trainable"]
        print(f"{name:16s} params {p:>11,d} ({p / 1e6:.2f} M; table 3.1 {table} M, "
              f"{(p / 1e6 - table) / table * 100:+.2f} %)", end="")
        for key in ("inference", "train"):
            if key in result:
                print(f"  {key} {result[key]['macs'] / 1e9:.1f} GMACs", end="")
                if "latency_s" in result[key]:
                    print(f" {result[key]['latency_s']:.2f} s", end="")
        print(flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
