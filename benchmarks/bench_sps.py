"""SPS benchmark: Pallas SFM kernel numerics (interpret mode) and XLA IdConv/SFM CPU time
against a dense 3x3 convolution over the same RoIs.

(a) The fused Pallas SFM (``impl="triton_interpret"``) against the XLA SFM on a small
    SPS state: max |Δ| of the output and of the table / weight / bias gradients.
(b) At the thesis's sizes (R = 100 RoIs, K = 10,000 selected cells per image, A = 4K =
    40,000 actives; F = 128 / 64 / 32 at stages 1 / 2 / 3 on 28² / 56² / 112² grids,
    thesis §5.3.3) the XLA IdConv (dilation 1) and SFM (dilations 1, 3, 5) forward and
    forward+backward (gradients w.r.t. the feature table and the weights) against
    ``lax.conv_general_dilated`` over the dense [R, S, S, F] RoI maps (gradients w.r.t.
    the dense map and the kernel). Same process, same inputs; medians after a warm-up.
    MACs are analytic: IdConv 9·C_in·numel(out) over the valid actives (the author's
    FLOP handle, DetSeg ``utils/flops.py``); the dense
    convolution 9·C_in·C_out·R·S². The dense backward is also timed with msvision's
    ``ops.conv.conv2d`` (its CPU kernel gradient is an im2col matmul, much faster than
    XLA's), the dense convolution the models use on the CPU.
(c) The passive rows of IdConv's table gradient: argsort + permutation + sorted
    ``segment_sum`` against one unsorted scatter-add (``passive_gradient`` methods).

Usage:
    JAX_PLATFORMS=cpu nice -n 10 python benchmarks/bench_sps.py [--repeats 3] [--stages 1,2,3]
        [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from msvision.ops.sps import select_and_split, sfm, sps_capacities, sps_from_dense, sps_macs  # noqa: E402
from msvision.ops.conv import conv2d  # noqa: E402
from msvision.ops.sps.id_conv import id_conv, neighbour_ids, passive_gradient  # noqa: E402
from msvision.ops.sps.reference import dense_conv3x3  # noqa: E402
from timing import median_seconds  # noqa: E402  (benchmarks/timing.py)

DILATIONS = (1, 3, 5)
STAGE_CHANNELS = {1: 128, 2: 64, 3: 32}




def build_sps(rois, stage, max_selected, channels, seed=0):
    """SPS state at ``stage`` after ``stage`` updates with random refinement logits."""
    rng = np.random.default_rng(seed)
    dense = jnp.asarray(rng.standard_normal((rois, 14, 14, 1)).astype(np.float32))
    sps = sps_from_dense(dense, jnp.ones((rois,), bool))
    caps = sps_capacities(rois, max_selected)
    for s in range(stage):
        logits = jnp.asarray(rng.standard_normal(sps.num_active).astype(np.float32))
        sps, _ = jax.jit(select_and_split, static_argnums=2)(sps, logits, caps.selected[s])
    act = jnp.asarray(rng.standard_normal((sps.num_active, channels)).astype(np.float32))
    pas = jnp.asarray(rng.standard_normal((sps.num_passive, channels)).astype(np.float32))
    return sps.replace(act=act, pas=pas)


def numerics(seed=0):
    """(a): max |Δ| between the interpret-mode kernel and the XLA op."""
    rng = np.random.default_rng(seed)
    sps = build_sps(4, 2, 150, 32, seed)
    table = sps.feature_table()
    weights = jnp.asarray(rng.standard_normal((3, 9 * 32, 32)) / np.sqrt(9 * 32), jnp.float32)
    biases = jnp.asarray(0.1 * rng.standard_normal((3, 32)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((sps.num_active, 32)), jnp.float32)
    args = (sps.id_map, sps.act_xy, sps.act_roi)

    def run(impl):
        def f(t, w, b):
            out, vjp = jax.vjp(lambda t, w, b: sfm(t, *args, w, b, impl=impl), t, w, b)
            return (out,) + vjp(cotangent)
        return jax.jit(f)(table, weights, biases)

    kernel, xla = run("triton_interpret"), run("xla")
    names = ("output", "d table", "d weights", "d biases")
    errors = {n: float(jnp.max(jnp.abs(a - b))) for n, a, b in zip(names, kernel, xla)}
    scales = {n: float(jnp.max(jnp.abs(b))) for n, b in zip(names, xla)}
    return sps, errors, scales


def time_stage(stage, rois, max_selected, repeats, seed=0):
    channels = STAGE_CHANNELS[stage]
    sps = build_sps(rois, stage, max_selected, channels, seed)
    rng = np.random.default_rng(seed + 1)
    size = sps.resolution
    table = sps.feature_table()
    weights = jnp.asarray(rng.standard_normal((3, 9 * channels, channels)) / np.sqrt(9 * channels), jnp.float32)
    biases = jnp.zeros((3, channels), jnp.float32)
    dense = table[sps.id_map]  # [R, S, S, F], the same features densified
    args = (sps.id_map, sps.act_xy, sps.act_roi)

    def idconv(t, w):
        return id_conv(t, *args, w, biases[0], 1)

    def sfm_xla(t, w):
        return sfm(t, *args, w, biases, DILATIONS, impl="xla")

    def dense_conv(x, w):
        return dense_conv3x3(x, w, biases[0], 1)

    def dense_sfm(x, w):
        return sum(jax.nn.relu(dense_conv3x3(x, w[i], biases[i], d)) for i, d in enumerate(DILATIONS))

    def conv2d_3x3(x, w, b, d):
        return conv2d(x, w.reshape(3, 3, channels, -1), padding=((d, d), (d, d)), dilation=d) + b

    def dense_conv_msv(x, w):
        return conv2d_3x3(x, w, biases[0], 1)

    def dense_sfm_msv(x, w):
        return sum(jax.nn.relu(conv2d_3x3(x, w[i], biases[i], d)) for i, d in enumerate(DILATIONS))

    results = {}
    for name, fn, x, w in (("idconv", idconv, table, weights[0]), ("dense conv", dense_conv, dense, weights[0]),
                           ("dense conv msv", dense_conv_msv, dense, weights[0]),
                           ("sfm", sfm_xla, table, weights), ("dense sfm", dense_sfm, dense, weights),
                           ("dense sfm msv", dense_sfm_msv, dense, weights)):
        forward = jax.jit(fn)
        backward = jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w) ** 2) / 2, argnums=(0, 1)))
        if name.endswith("msv"):  # same forward as lax.conv; only the backward differs
            fb = median_seconds(lambda: jax.block_until_ready(backward(x, w)), repeats)
            results[name] = (float("nan"), fb, float("nan"))
            continue
        fwd = median_seconds(lambda: forward(x, w).block_until_ready(), repeats)
        fb = median_seconds(lambda: jax.block_until_ready(backward(x, w)), repeats)
        temp = backward.lower(x, w).compile().memory_analysis()
        temp_mb = temp.temp_size_in_bytes / 2 ** 20 if temp is not None else float("nan")
        results[name] = (fwd, fb, temp_mb)
    valid = int(jnp.sum(sps.act_valid))
    macs = {"idconv": sps_macs(valid, channels, channels), "sfm": sps_macs(valid, channels, channels, 3),
            "dense conv": 9 * channels * channels * rois * size * size,
            "dense sfm": 3 * 9 * channels * channels * rois * size * size}
    ids = neighbour_ids(sps.id_map, sps.act_xy, sps.act_roi, 1, sps.pad_id)
    values = jnp.asarray(rng.standard_normal((sps.num_active, 9, channels)), jnp.float32)
    passive = {}
    for method in ("sorted", "scatter"):
        fn = jax.jit(lambda v, i, m=method: passive_gradient(v, i, sps.num_active, table.shape[0], m))
        passive[method] = median_seconds(lambda: fn(values, ids).block_until_ready(), repeats)
    passive_refs = int(jnp.sum((ids >= sps.num_active) & (ids < sps.pad_id)))
    return sps, size, channels, results, macs, (passive, passive_refs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", default="1,2,3")
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--max-selected", type=int, default=10_000)
    parser.add_argument("--append", default=None, help="markdown file to append the tables to")
    args = parser.parse_args()

    lines = []
    sps, errors, scales = numerics()
    lines.append(f"(a) Pallas SFM kernel (interpret mode) vs XLA SFM, A = {sps.num_active} actives, "
                 f"P = {sps.num_passive} passives, F = 32:")
    lines.append("")
    lines.append("| quantity | max abs error | max abs value |")
    lines.append("|---|---|---|")
    for name in errors:
        lines.append(f"| {name} | {errors[name]:.2e} | {scales[name]:.2e} |")
    lines.append("")
    lines.append(f"(b) XLA IdConv / SFM vs dense lax.conv over the same RoIs, R = {args.rois}, "
                 f"K = {args.max_selected} (ms, medians of {args.repeats}; ratio = dense / SPS time):")
    lines.append("")
    lines.append("| stage (S, F, A, P) | op | SPS fwd ms | dense fwd ms | fwd ratio | SPS fwd+bwd ms | "
                 "dense fwd+bwd ms | fwd+bwd ratio | dense (ops.conv2d) fwd+bwd ms | ratio | "
                 "SPS / dense GMACs | temp MiB fwd+bwd SPS / dense |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    passive_lines = []
    for stage in (int(s) for s in args.stages.split(",")):
        sps, size, channels, results, macs, (passive, refs) = time_stage(stage, args.rois, args.max_selected,
                                                                          args.repeats)
        label = f"{stage} ({size}², {channels}, {sps.num_active}, {sps.num_passive})"
        for ours, theirs in (("idconv", "dense conv"), ("sfm", "dense sfm")):
            (f1, b1, m1), (f2, b2, m2) = results[ours], results[theirs]
            b3 = results[theirs + " msv"][1]
            lines.append(f"| {label} | {ours} | {1e3 * f1:.1f} | {1e3 * f2:.1f} | {f2 / f1:.2f}× | {1e3 * b1:.1f} | "
                         f"{1e3 * b2:.1f} | {b2 / b1:.2f}× | {1e3 * b3:.1f} | {b3 / b1:.2f}× | "
                         f"{macs[ours] / 1e9:.2f} / {macs[theirs] / 1e9:.2f} | {m1:.0f} / {m2:.0f} |")
        print("\n".join(lines[-2:]), flush=True)
        passive_lines.append(f"| {label} | {refs} of {9 * sps.num_active} | {1e3 * passive['sorted']:.1f} | "
                             f"{1e3 * passive['scatter']:.1f} | {passive['sorted'] / passive['scatter']:.2f}× |")
    lines.append("")
    lines.append("(c) Passive rows of the IdConv table gradient (dilation 1), sorted segment_sum vs scatter-add:")
    lines.append("")
    lines.append("| stage (S, F, A, P) | passive references | sorted ms | scatter ms | sorted / scatter |")
    lines.append("|---|---|---|---|---|")
    lines.extend(passive_lines)
    text = "\n".join(lines)
    print(text)
    if args.append:
        command = "JAX_PLATFORMS=cpu nice -n 10 python benchmarks/bench_sps.py " + " ".join(sys.argv[1:])
        with open(args.append, "a") as f:
            f.write(f"\n#### {time.strftime('%Y-%m-%d %H:%M')} — `{command}`\n\n")
            f.write(f"jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} CPU threads (XLA default), "
                    "machine shared with other jobs.\n\n")
            f.write(text + "\n")


if __name__ == "__main__":
    main()
