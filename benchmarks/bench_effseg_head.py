"""EffSeg head alone: parameters, MACs over the valid cells, XLA's capacity MACs, CPU latency.

Next to thesis table 5.4 (heads alone, FQDetV2 with 300 queries, averaged over the first
100 COCO val images; EffSeg 4.2 M params, 85.3 GFLOPs) and table 5.7 (processing
modules, whole model). Input: one 800×800 image, a P2–P5 pyramid of width 256, R RoIs
(boxes with log-uniform sizes 16–600 px, the detections' unique queries), the thesis's
K = 10,000 refined cells per stage. Timed: the jitted head forward plus the mask
assembly (upsample and overwrite to 112×112 probabilities), inference only.

    python benchmarks/bench_effseg_head.py [--rois 100] [--repeats 3] [--modules sfm,dense_sfm]

Ratios between rows are measured in the same process (same load), the meaningful
numbers on a shared CPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msvision.models.abstract import abstract_init, cheap_tracer_errors
from msvision.models.heads.effseg import EffSegHead
from msvision.analysis.cost import compile_cost
from msvision.models.heads.effseg.cost import effseg_macs, stage_counts
from msvision.models.heads.effseg.postprocess import assemble_mask_logits
from msvision.models.layers import count_variables

# Thesis reference numbers: table 5.4 (head alone) and table 5.7 (whole FQDet model).
THESIS_HEAD = {"sfm": ("4.2 M", "85.3 G", "16.0")}
THESIS_MODEL = {"mlp": ("38.4 M", "227.4 G", "8.7"), "conv": ("38.5 M", "234.0 G", "8.5"),
                "deform_conv": ("38.5 M", "235.1 G", "7.4"), "sfm": ("38.8 M", "245.5 G", "8.0"),
                "dense_sfm": ("38.9 M", "337.8 G", "5.6")}


def inputs(num_rois: int, image: int = 800, channels: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    pyramid = {l: jnp.asarray(rng.standard_normal((1, image >> l, image >> l, channels)), jnp.float32)
               for l in range(2, 6)}
    size = np.exp(rng.uniform(np.log(16), np.log(600), (1, num_rois, 2)))
    xy = rng.uniform(0, image - size)
    boxes = np.concatenate([xy, xy + size], -1).astype(np.float32)
    queries = jnp.asarray(rng.standard_normal((1, num_rois, channels)), jnp.float32)
    return pyramid, jnp.asarray([[image, image]], jnp.int32), queries, jnp.asarray(boxes)


def measure(processing: str, num_rois: int, repeats: int) -> dict:
    make = lambda: EffSegHead(levels=(2, 3, 4, 5), processing=processing, sfm_impl="xla",  # noqa: E731
                              rngs=nnx.Rngs(0))
    graphdef = nnx.split(abstract_init(make))[0]
    with cheap_tracer_errors():  # tracing the initialisers (msvision.models.abstract)
        state = jax.jit(lambda: nnx.split(make())[1])()
    params = count_variables(nnx.merge(graphdef, state), nnx.Param)
    pyramid, sizes, queries, boxes = inputs(num_rois)
    valid = jnp.ones((1, num_rois), bool)

    def forward(state, pyramid, queries, boxes):
        head = nnx.merge(graphdef, state)
        stages = head(pyramid, sizes, queries, boxes, valid)
        return jax.nn.sigmoid(assemble_mask_logits(stages, num_rois)), stages

    t0 = time.perf_counter()
    compiled = jax.jit(forward).lower(state, pyramid, queries, boxes).compile()
    compile_s = time.perf_counter() - t0
    # XLA counts a while loop's body once: the MACs are counted on a trace with the IdConv's
    # tap scan unrolled (msvision.ops.sps.id_conv.unrolled_taps), the timing on the scan.
    _, cost = compile_cost(lambda *a: forward(*a), state, pyramid, queries, boxes)
    probs, stages = jax.block_until_ready(compiled(state, pyramid, queries, boxes))
    counts = stage_counts(stages)
    macs = effseg_macs(256, counts["rois"], counts["actives"], processing=processing)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, pyramid, queries, boxes))
        times.append(time.perf_counter() - t0)
    return dict(processing=processing, params=params, macs=macs, xla_macs=float(cost["macs"]),
                latency_s=float(np.median(times)), compile_s=compile_s, actives=counts["actives"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modules", default="sfm,dense_sfm,conv,mlp,deform_conv")
    parser.add_argument("--append", default="", help="append the markdown section to this file")
    args = parser.parse_args(argv)
    rows = [measure(m, args.rois, args.repeats) for m in args.modules.split(",")]
    base = next((r for r in rows if r["processing"] == "sfm"), rows[0])
    load = os.getloadavg()[0]
    lines = [
        f"#### {datetime.datetime.now():%Y-%m-%d %H:%M} — `python benchmarks/bench_effseg_head.py "
        f"--rois {args.rois} --repeats {args.repeats} --modules {args.modules}`",
        "",
        f"jax {jax.__version__}, {jax.default_backend()} ({os.cpu_count()} CPU threads), load average "
        f"{load:.1f} at the end of the run; one 800×800 image, R = {args.rois} RoIs, K = 10,000.",
        "",
        "| module | params | GMACs (valid cells) | GMACs (XLA, capacity) | CPU ms (median) | latency / SFM "
        "| thesis: head params, GFLOPs, FPS (5.4) | thesis: model params, GFLOPs, FPS (5.7) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = " / ".join(THESIS_HEAD.get(r["processing"], ("–",)))
        model = " / ".join(THESIS_MODEL.get(r["processing"], ("–",)))
        lines.append(f"| {r['processing']} | {r['params']:,} | {r['macs']['total'] / 1e9:.1f} | "
                     f"{r['xla_macs'] / 1e9:.1f} | {r['latency_s'] * 1e3:.0f} | "
                     f"{r['latency_s'] / base['latency_s']:.2f}× | {head} | {model} |")
    lines += ["", "MACs by component (GMACs, valid cells):", "",
              "| module | " + " | ".join(k for k in base["macs"] if k != "total") + " |",
              "|---|" + "---|" * (len(base["macs"]) - 1)]
    for r in rows:
        lines.append(f"| {r['processing']} | " + " | ".join(f"{v / 1e9:.2f}" for k, v in r["macs"].items()
                                                          if k != "total") + " |")
    lines += ["", "Valid actives per stage: " + "; ".join(f"{r['processing']} {r['actives']}" for r in rows), ""]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
