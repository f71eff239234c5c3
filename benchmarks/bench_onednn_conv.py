"""One convolution by XLA, by the oneDNN custom calls, and by torch, float32 and bfloat16.

The convolution studied (does bfloat16 pay on the CPU?): 3×3, 256→256 channels, stride 1,
padding 1, on a 2×100×100 NHWC input. For each dtype and implementation, the
forward alone and the forward with both gradients (output, dL/dx, dL/dkernel),
jitted, median of ``--repeats`` runs after one warm-up call. GFLOP/s count
2·N·OH·OW·O·KH·KW·C per forward and three times that with the gradients; the
ratio is against XLA float32 measured in the same process.

- XLA: :func:`msvision.ops.conv.conv2d` with ``impl="xla"`` (the path the models
  run today: XLA's forward and input gradient, the im2col kernel gradient);
- oneDNN: the same function with ``impl="onednn"`` (:mod:`msvision.ops.onednn`);
  the implementation oneDNN picked is printed ("+f32": bf16 run as float32);
- torch (if installed): ``conv2d`` on channels-last tensors (weights reordered by
  torch on every call), forward under ``no_grad``, backward by autograd.

oneDNN and torch use ``OMP_NUM_THREADS`` OpenMP threads, XLA its own thread pool
(one thread per CPU). Run on an idle machine::

    JAX_PLATFORMS=cpu python benchmarks/bench_onednn_conv.py [--repeats 5] [--quick]

``--quick``: a tiny convolution and two repeats, to check that the script runs.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from msvision.ops import conv
from msvision.ops.onednn import ffi
from timing import median_seconds

SHAPE = dict(batch=2, size=100, channels_in=256, channels_out=256, kernel=3)  # the convolution studied
QUICK_SHAPE = dict(batch=1, size=12, channels_in=16, channels_out=16, kernel=3)


def jax_functions(impl: str, padding):
    """(forward, forward with both gradients) jitted, through msvision.ops.conv.conv2d(impl=...)."""

    def forward(x, kernel):
        return conv.conv2d(x, kernel, 1, padding, impl=impl)

    def forward_backward(x, kernel, output_grad):
        output, vjp = jax.vjp(forward, x, kernel)
        return output, *vjp(output_grad)

    return jax.jit(forward), jax.jit(forward_backward)


def time_jax(impl: str, dtype, x, kernel, output_grad, padding, repeats: int) -> tuple[float, float]:
    forward, forward_backward = jax_functions(impl, padding)
    x, kernel, output_grad = (jnp.asarray(a, dtype) for a in (x, kernel, output_grad))
    fwd = median_seconds(lambda: jax.block_until_ready(forward(x, kernel)), repeats)
    both = median_seconds(lambda: jax.block_until_ready(forward_backward(x, kernel, output_grad)), repeats)
    return fwd, both


def time_torch(torch, dtype: str, x, kernel, output_grad, padding: int, repeats: int) -> tuple[float, float]:
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    channels_last = torch.channels_last
    tx = torch.tensor(x.transpose(0, 3, 1, 2)).to(torch_dtype).contiguous(memory_format=channels_last)
    tw = torch.tensor(kernel.transpose(3, 2, 0, 1)).to(torch_dtype).contiguous(memory_format=channels_last)
    tg = torch.tensor(output_grad.transpose(0, 3, 1, 2)).to(torch_dtype).contiguous(memory_format=channels_last)

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw, padding=padding)

    def forward_backward():
        a, w = tx.detach().requires_grad_(), tw.detach().requires_grad_()
        output = torch.nn.functional.conv2d(a, w, padding=padding)
        return torch.autograd.grad(output, (a, w), tg)

    return median_seconds(forward, repeats), median_seconds(forward_backward, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tiny convolution and 2 repeats (checks the script)")
    args = parser.parse_args()
    shape = QUICK_SHAPE if args.quick else SHAPE
    repeats = 2 if args.quick else args.repeats
    n, size, cin, cout, k = (shape[key] for key in ("batch", "size", "channels_in", "channels_out", "kernel"))
    padding = ((k // 2, k // 2), (k // 2, k // 2))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, size, size, cin)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
    output_grad = rng.standard_normal((n, size, size, cout)).astype(np.float32)
    flops = 2.0 * n * size * size * cout * k * k * cin

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.2f}")
    print(f"convolution {k}x{k}, {cin}->{cout} channels, input {n}x{size}x{size} NHWC, {flops / 1e9:.2f} GFLOP "
          f"forward, {repeats} repeats")
    onednn = ffi.available()
    if onednn:
        for dtype in (jnp.float32, jnp.bfloat16):
            names = [ffi.implementation(kind, x.shape, kernel.shape, dtype, 1, padding) for kind in ffi.KINDS]
            print(f"oneDNN {jnp.dtype(dtype).name}: forward {names[0]}, input grad {names[1]}, kernel grad {names[2]}")
    else:
        print(f"oneDNN unavailable: {ffi.unavailable_reason()}")
    try:
        import torch
    except ImportError:
        torch = None
        print("torch not installed: no torch rows")

    rows = []  # (implementation, dtype, forward seconds, forward+backward seconds)
    for dtype in ("float32", "bfloat16"):
        rows.append(("XLA", dtype, *time_jax("xla", dtype, x, kernel, output_grad, padding, repeats)))
        if onednn:
            rows.append(("oneDNN", dtype, *time_jax("onednn", dtype, x, kernel, output_grad, padding, repeats)))
        if torch is not None:
            rows.append(("torch", dtype, *time_torch(torch, dtype, x, kernel, output_grad, k // 2, repeats)))

    _, _, base_forward, base_both = rows[0]  # XLA float32
    print(f"{'implementation':<15}{'dtype':<10}{'forward ms':>11}{'GFLOP/s':>9}{'ratio':>7}"
          f"{'fwd+bwd ms':>12}{'GFLOP/s':>9}{'ratio':>7}")
    for name, dtype, forward, both in rows:
        print(f"{name:<15}{dtype:<10}{forward * 1e3:>11.2f}{flops / forward / 1e9:>9.0f}{base_forward / forward:>7.2f}"
              f"{both * 1e3:>12.2f}{3 * flops / both / 1e9:>9.0f}{base_both / both:>7.2f}")


if __name__ == "__main__":
    main()
