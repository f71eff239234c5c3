"""RefineMask++ head alone next to EffSeg's: parameters, MACs, CPU latency (thesis table 5.4).

Table 5.4 (heads alone, FQDetV2 with 300 queries, first 100 COCO val images, RTX 3060 Ti):
RefineMask++ 6.6 M / 285.6 GFLOPs / 11.1 FPS, EffSeg 4.2 M / 85.3 GFLOPs / 16.0 FPS, i.e.
EffSeg 70 % fewer FLOPs and 44 % more FPS. Here: one 800×800 image, a P2–P5 pyramid of
width 256, R RoIs (the inputs of ``bench_effseg_head.py``: log-uniform boxes 16–600 px),
both heads' inference forward plus their mask assembly to 112×112 probabilities, in one
process so the ratios share the machine's load.

    python benchmarks/bench_refinemask_head.py [--rois 100] [--repeats 2]
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

from bench_effseg_head import inputs
from msvision.models.abstract import abstract_init, cheap_tracer_errors
from msvision.models.heads.effseg import EffSegHead
from msvision.models.heads.effseg.cost import effseg_macs, stage_counts
from msvision.models.heads.effseg.postprocess import assemble_mask_logits as effseg_assemble
from msvision.models.heads.refinemask import RefineMaskHead
from msvision.models.heads.refinemask.cost import refinemask_macs
from msvision.models.layers import count_variables


def build(make):
    graphdef = nnx.split(abstract_init(make))[0]
    with cheap_tracer_errors():
        state = jax.jit(lambda: nnx.split(make())[1])()
    return graphdef, state, count_variables(nnx.merge(graphdef, state), nnx.Param)


def time_it(compiled, args, repeats):
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def xla_macs(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", np.nan)) / 2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    r = args.rois
    pyramid, sizes, queries, boxes = inputs(r)
    valid = jnp.ones((1, r), bool)
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 80, (1, r)), jnp.int32)
    rows = []

    graphdef, state, params = build(lambda: RefineMaskHead(levels=(2, 3, 4, 5), rngs=nnx.Rngs(0)))

    def refinemask(state, pyramid, queries, boxes):
        return nnx.merge(graphdef, state).mask_probabilities(pyramid, sizes, queries, boxes, labels, valid)

    t0 = time.perf_counter()
    compiled = jax.jit(refinemask).lower(state, pyramid, queries, boxes).compile()
    compile_s = time.perf_counter() - t0
    _, latency = time_it(compiled, (state, pyramid, queries, boxes), args.repeats)
    macs = refinemask_macs(256, r, (800 // 4) ** 2)
    rows.append(dict(name="RefineMask++", params=params, macs=macs, xla=xla_macs(compiled), latency=latency,
                     compile_s=compile_s, thesis="6.6 M / 285.6 G / 11.1"))

    e_graphdef, e_state, e_params = build(lambda: EffSegHead(levels=(2, 3, 4, 5), sfm_impl="xla", rngs=nnx.Rngs(0)))

    def effseg(state, pyramid, queries, boxes):
        stages = nnx.merge(e_graphdef, state)(pyramid, sizes, queries, boxes, valid)
        return jax.nn.sigmoid(effseg_assemble(stages, r)), stages

    t0 = time.perf_counter()
    compiled = jax.jit(effseg).lower(e_state, pyramid, queries, boxes).compile()
    compile_s = time.perf_counter() - t0
    (_, stages), latency = time_it(compiled, (e_state, pyramid, queries, boxes), args.repeats)
    counts = stage_counts(stages)
    rows.append(dict(name="EffSeg", params=e_params, macs=effseg_macs(256, counts["rois"], counts["actives"]),
                     xla=xla_macs(compiled), latency=latency, compile_s=compile_s, thesis="4.2 M / 85.3 G / 16.0"))

    base = rows[0]
    lines = [
        f"#### {datetime.datetime.now():%Y-%m-%d %H:%M} — `python benchmarks/bench_refinemask_head.py "
        f"--rois {r} --repeats {args.repeats}`",
        "",
        f"jax {jax.__version__}, {jax.default_backend()} ({os.cpu_count()} CPU threads), load average "
        f"{os.getloadavg()[0]:.1f} at the end; one 800×800 image, R = {r} RoIs, EffSeg K = 10,000.",
        "",
        "| head | params | GMACs (analytic) | GMACs (XLA) | CPU s (median) | MACs vs RefineMask++ "
        "| latency vs RefineMask++ | thesis 5.4: params / GFLOPs / FPS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['name']} | {row['params']:,} | {row['macs']['total'] / 1e9:.1f} | {row['xla'] / 1e9:.1f} "
                     f"| {row['latency']:.2f} | {row['macs']['total'] / base['macs']['total']:.2f}× "
                     f"| {row['latency'] / base['latency']:.2f}× | {row['thesis']} |")
    lines += ["", "RefineMask++ by component (analytic GMACs): " + ", ".join(
        f"{k} {v / 1e9:.2f}" for k, v in base["macs"].items() if k != "total"), ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
