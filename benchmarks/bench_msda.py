"""CPU benchmark: our XLA MSDA versus Deformable DETR's PyTorch reference.

Both implementations run in the same process on the same inputs. Timings are
medians over a few repeats (the machine is shared: run under ``taskset`` and read
the medians, not the minima). Peak memory: for XLA the compiled executable's
``temp_size_in_bytes`` (intermediate buffers, exact); for torch the growth of the
process's peak RSS during the measured call (coarse, an upper bound).

Usage:
    JAX_PLATFORMS=cpu taskset -c 0,1 python benchmarks/bench_msda.py [--repeats 5]
        [--shapes fqdet_q300_p1,...] [--impl xla|cpu|auto] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from msvision.ops.msda import multiscale_deformable_attention  # noqa: E402
from timing import median_seconds  # noqa: E402  (benchmarks/timing.py)

# 800x800 image, P3..P7 (stride 8..128; P6, P7 by stride-2 3x3 convs: ceil halving).
PYRAMID_800 = ((100, 100), (50, 50), (25, 25), (13, 13), (7, 7))
NUM_PYRAMID_POSITIONS = sum(h * w for h, w in PYRAMID_800)  # 13343

SHAPES = {
    # name: (batch, queries, heads, channels, points)
    "fqdet_q300_p1": (2, 300, 8, 32, 1),
    "fqdet_q300_p4": (2, 300, 8, 32, 4),
    "fqdet_q1500_p1": (2, 1500, 8, 32, 1),
    "fqdet_q1500_p4": (2, 1500, 8, 32, 4),
    "defencoder_p4": (1, NUM_PYRAMID_POSITIONS, 8, 32, 4),
}


def torch_reference(value, spatial_shapes, sampling_locations, attention_weights):
    """Deformable DETR's ``ms_deform_attn_core_pytorch`` (verbatim semantics)."""
    import torch
    import torch.nn.functional as F

    n, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(n * heads, channels, h, w)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampling_value_list.append(F.grid_sample(
            value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    attention_weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1)
    return output.view(n, heads * channels, queries).transpose(1, 2).contiguous()


def make_inputs(batch, queries, heads, channels, points, seed=0):
    rng = np.random.default_rng(seed)
    levels = len(PYRAMID_800)
    value = rng.standard_normal((batch, NUM_PYRAMID_POSITIONS, heads, channels), np.float32)
    locations = rng.uniform(-0.05, 1.05, (batch, queries, heads, levels, points, 2)).astype(np.float32)
    weights = rng.random((batch, queries, heads, levels, points), np.float32)
    weights /= weights.sum(axis=(-1, -2), keepdims=True)
    return value, locations, weights




def peak_rss_growth_mb(fn):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 1024.0


def bench_jax(value, locations, weights, repeats, impl):
    value, locations, weights = map(jnp.asarray, (value, locations, weights))
    output_grad = jnp.ones((value.shape[0], locations.shape[1], value.shape[2] * value.shape[3]))

    def loss(v, l, w):
        out = multiscale_deformable_attention(v, PYRAMID_800, l, w, impl=impl)
        return jnp.vdot(out, output_grad)

    forward = jax.jit(lambda v, l, w: multiscale_deformable_attention(v, PYRAMID_800, l, w, impl=impl))
    # value_and_grad, not grad: the loss value needs the output, so the forward runs as in
    # torch's `.sum().backward()` (with jax.grad XLA drops the unused forward: a backward-only time).
    forward_backward = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    fwd_s = median_seconds(lambda: forward(value, locations, weights).block_until_ready(), repeats)
    fb_s = median_seconds(lambda: jax.block_until_ready(forward_backward(value, locations, weights)), repeats)
    memory = {}
    for name, fn in (("fwd", forward), ("fwd_bwd", forward_backward)):
        analysis = fn.lower(value, locations, weights).compile().memory_analysis()
        memory[name] = None if analysis is None else analysis.temp_size_in_bytes / 2**20
    return fwd_s, fb_s, memory


def bench_torch(value, locations, weights, repeats):
    import torch

    value = torch.from_numpy(value)
    locations = torch.from_numpy(locations)
    weights = torch.from_numpy(weights)

    def forward():
        with torch.no_grad():
            torch_reference(value, PYRAMID_800, locations, weights)

    def forward_backward():
        v = value.detach().requires_grad_()
        l = locations.detach().requires_grad_()
        w = weights.detach().requires_grad_()
        torch_reference(v, PYRAMID_800, l, w).sum().backward()

    fwd_s = median_seconds(forward, repeats)
    fb_s = median_seconds(forward_backward, repeats)
    return fwd_s, fb_s, peak_rss_growth_mb(forward_backward)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--impl", default="xla")
    parser.add_argument("--append", default=None, help="markdown file to append the table to")
    args = parser.parse_args()

    import torch

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    # Warm torch's thread pool and grid_sample kernels once, outside every measurement.
    bench_torch(*make_inputs(1, 16, 2, 8, 1), repeats=1)
    rows = []
    header = ("| shape (B, Q, M×C, P) | torch fwd ms | ours fwd ms | fwd speed-up | torch fwd+bwd ms "
              "| ours fwd+bwd ms | fwd+bwd speed-up | ours temp MiB fwd / fwd+bwd | torch peak-RSS growth MiB fwd+bwd (lower bound) |")
    print(header)
    print("|" + "---|" * 9)
    for name in args.shapes.split(","):
        batch, queries, heads, channels, points = SHAPES[name]
        inputs = make_inputs(batch, queries, heads, channels, points)
        torch_fwd, torch_fb, torch_mb = bench_torch(*inputs, args.repeats)
        ours_fwd, ours_fb, ours_mb = bench_jax(*inputs, args.repeats, args.impl)
        fmt_mb = lambda x: "n/a" if x is None else f"{x:.0f}"
        row = (f"| {name} ({batch}, {queries}, {heads}×{channels}, {points}) | {torch_fwd*1e3:.1f} | "
               f"{ours_fwd*1e3:.1f} | {torch_fwd/ours_fwd:.2f}× | {torch_fb*1e3:.1f} | {ours_fb*1e3:.1f} | "
               f"{torch_fb/ours_fb:.2f}× | {fmt_mb(ours_mb['fwd'])} / {fmt_mb(ours_mb['fwd_bwd'])} | "
               f"{torch_mb:.0f} |")
        print(row, flush=True)
        rows.append(row)

    if args.append:
        command = "JAX_PLATFORMS=cpu taskset -c {} python {}".format(
            ",".join(map(str, sorted(os.sched_getaffinity(0)))), " ".join(sys.argv))
        with open(args.append, "a") as f:
            f.write(f"\n### {time.strftime('%Y-%m-%d %H:%M')} — `{command}`\n\n")
            f.write(f"jax {jax.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
                    f"{threads} CPU threads (torch.set_num_threads({threads})), medians of {args.repeats} repeats "
                    f"after one warm-up; load average {os.getloadavg()[0]:.2f} at the end.\n\n")
            f.write(header + "\n|" + "---|" * 9 + "\n")
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
