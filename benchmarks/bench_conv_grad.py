"""Convolution backward on the CPU: XLA's kernel gradient against msvision.ops.conv.

For ResNet-50 / FPN convolution shapes of an 800×800 batch of two, times in one
process: the forward, XLA's input gradient, XLA's kernel gradient, and the full
backward (input + kernel gradient) of ``lax.conv_general_dilated`` against that of
:func:`msvision.ops.conv.conv2d` (same forward and input gradient, im2col-matmul
kernel gradient on the CPU). Prints GFLOP/s and the speed-up of the backward.

    JAX_PLATFORMS=cpu python benchmarks/bench_conv_grad.py [--repeats 3] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
from jax import lax

from msvision.ops.conv import conv2d

SHAPES = [  # (H = W, in, out, kernel, stride) at batch 2, 800×800 input
    (100, 256, 64, 1, 1),  # layer2-entry bottleneck reduce (C2 level)
    (100, 64, 64, 3, 1),
    (100, 128, 128, 3, 2),  # layer2 stride-2 3×3
    (50, 256, 256, 3, 1),  # layer3 3×3
    (50, 1024, 256, 1, 1),  # layer3 reduce
    (50, 512, 1024, 1, 2),  # layer3 downsample
    (25, 512, 512, 3, 1),  # layer4 3×3
    (100, 256, 256, 3, 1),  # FPN / head 3×3 on P3
]


def _lax_conv(x, w, stride, padding):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _best_time(fn, *args, repeats: int) -> float:
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, load average {os.getloadavg()[0]:.2f}")
    header = ("| shape (H, in→out, k, stride) | forward GFLOP/s | XLA input grad GFLOP/s | XLA kernel grad "
              "GFLOP/s | backward XLA (ms) | backward ours (ms) | speed-up |")
    print(header if args.markdown else header.replace("|", " "))
    if args.markdown:
        print("| --- " * 7 + "|")
    key = jax.random.key(0)
    for h, cin, cout, k, stride in SHAPES:
        padding = ((k // 2, k // 2),) * 2
        x = jax.random.normal(key, (2, h, h, cin))
        w = jax.random.normal(key, (k, k, cin, cout)) * 0.01
        g = jnp.ones(_lax_conv(x, w, stride, padding).shape)
        flops = 2 * g.size * cin * k * k
        t_fwd = _best_time(lambda x, w: _lax_conv(x, w, stride, padding), x, w, repeats=args.repeats)
        t_dx = _best_time(lambda x, w, g: jax.vjp(lambda x: _lax_conv(x, w, stride, padding), x)[1](g)[0],
                          x, w, g, repeats=args.repeats)
        t_dw = _best_time(lambda x, w, g: jax.vjp(lambda w: _lax_conv(x, w, stride, padding), w)[1](g)[0],
                          x, w, g, repeats=args.repeats)
        t_xla = _best_time(lambda x, w, g: jax.vjp(lambda x, w: _lax_conv(x, w, stride, padding), x, w)[1](g),
                           x, w, g, repeats=args.repeats)
        t_ours = _best_time(lambda x, w, g: jax.vjp(lambda x, w: conv2d(x, w, stride, padding), x, w)[1](g),
                            x, w, g, repeats=args.repeats)
        cells = [f"{h}, {cin}→{cout}, {k}×{k}, {stride}", f"{flops / t_fwd / 1e9:.0f}", f"{flops / t_dx / 1e9:.0f}",
                 f"{flops / t_dw / 1e9:.0f}", f"{t_xla * 1e3:.1f}", f"{t_ours * 1e3:.1f}", f"{t_xla / t_ours:.2f}×"]
        print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
