"""R50-FPN RetinaNet in bfloat16 on the CPU: XLA, oneDNN and torchvision side by side.

One process, the same thread count for all rows, random weights, the network
configured as torchvision's ``retinanet_resnet50_fpn`` (the ``like torchvision``
rows of ``bench_retinanet.py``):

  * inference: one 800×800 image, batch 1 (``Detector.predict`` with NMS;
    torchvision ``model.eval()(images)`` with its post-processing);
  * train step: forward + backward + AdamW on two 800×800 images, ten objects each.

Rows of ours: ``model.dtype`` float32 or bfloat16 (parameters, optimizer state
and losses stay float32) with the convolutions by XLA (``MSVISION_CONV_IMPL=xla``)
or by oneDNN (``onednn``, :mod:`msvision.ops.onednn`). torchvision rows: float32,
and ``torch.autocast("cpu", dtype=torch.bfloat16)`` with a channels-last model.
Ratios are against our float32 XLA row. The oneDNN implementation chosen for a
3×3 256-channel convolution is printed (``avx512_core_amx`` = AMX tiles; ``+f32``
= bfloat16 computed in float32 on a CPU without native bfloat16 convolutions).

    JAX_PLATFORMS=cpu python benchmarks/bench_retinanet_bf16.py [--repeats 3] [--skip-train]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

from bench_retinanet import LIKE_TORCHVISION, ours, torchvision_reference
from msvision.ops.conv import IMPL_ENV
from msvision.ops.onednn import ffi


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f"))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true", help="inference rows only")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for RESULTS.md")
    args = parser.parse_args()
    import jaxlib

    threads = os.cpu_count()
    print(f"jax {jax.__version__} / jaxlib {jaxlib.__version__}, {threads} threads, load average "
          f"{os.getloadavg()[0]:.2f}, CPU flags: {cpu_flags()}")
    onednn = ffi.available()
    if onednn:
        shape = ((1, 100, 100, 256), (3, 3, 256, 256))
        for dtype in (jnp.float32, jnp.bfloat16):
            print(f"oneDNN {jnp.dtype(dtype).name} 3x3 conv: "
                  f"{ffi.implementation('forward', *shape, dtype, 1, ((1, 1), (1, 1)))}")
    else:
        print(f"oneDNN unavailable: {ffi.unavailable_reason()}")

    variants = [("float32", "xla"), ("bfloat16", "xla")]
    if onednn:
        variants += [("float32", "onednn"), ("bfloat16", "onednn")]
    rows = []  # (label, inference s, train s)
    for dtype, impl in variants:
        os.environ[IMPL_ENV] = impl
        result = ours(args.repeats, [*LIKE_TORCHVISION, f"--config.model.dtype={dtype}"], train=not args.skip_train)
        rows.append((f"msvision {dtype}, {impl}", result["infer_s"], result.get("train_s")))
        print(rows[-1], flush=True)
    os.environ.pop(IMPL_ENV)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("torch not installed: no torchvision rows")
    else:
        for bf16 in (False, True):
            ref = torchvision_reference(args.repeats, threads, bfloat16=bf16, train=not args.skip_train)
            label = "torchvision bfloat16 autocast, channels-last" if bf16 else "torchvision float32"
            rows.append((f"{label} (torch {ref['version']})", ref["infer_s"], ref.get("train_s")))
            print(rows[-1], flush=True)

    base_infer, base_train = rows[0][1], rows[0][2]
    print("| run | inference 1×800² (s) | vs msvision float32 XLA | train step 2×800² (s) | vs msvision float32 XLA |")
    print("| --- | --- | --- | --- | --- |")
    for label, infer_s, train_s in rows:
        train = f"{train_s:.3f} | {base_train / train_s:.2f}×" if train_s else "– | –"
        print(f"| {label} | {infer_s:.3f} | {base_infer / infer_s:.2f}× | {train} |")


if __name__ == "__main__":
    main()
