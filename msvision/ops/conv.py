"""2-D convolution, NHWC inputs and HWIO kernels (groups = 1, explicit padding).

By default XLA's forward and input gradient with a CPU-fast kernel gradient
(:mod:`msvision.ops.conv_xla`: matmuls of im2col windows on the CPU, XLA's own
elsewhere).

Implementation switch (opt-in, for benchmarks of whole networks): ``impl`` of
:func:`conv2d`, by default the environment variable ``MSVISION_CONV_IMPL``, read
when the convolution is traced. jax caches the trace of a Python function, also
across ``jax.jit`` objects: to compare implementations in one process, jit a new
function (a new ``lambda``) after changing the variable.

- ``"xla"`` (the default): the above, exactly as without the switch;
- ``"onednn"``: oneDNN custom calls for the forward and both gradients when lowered
  for the CPU (:mod:`msvision.ops.onednn`; float32 and bfloat16, non-negative
  padding; other convolutions and other platforms stay as ``"xla"``); raises if the
  oneDNN kernel is unavailable (wheels of the ``onednn`` extra, a C++ compiler);
- ``"auto"``: ``"onednn"`` where :func:`msvision.ops.onednn.auto_enabled` says so
  (the CPU is the default backend, float32, or bfloat16 on a CPU with native bf16
  convolutions, and the kernel builds), else ``"xla"``, with one warning if the
  kernel could not be built.

``jax.export`` refuses oneDNN's custom calls: export with ``"xla"``.
"""

from __future__ import annotations

import os

import jax

from msvision.ops.conv_xla import Padding, conv2d_xla

IMPL_ENV = "MSVISION_CONV_IMPL"
IMPLEMENTATIONS = ("xla", "onednn", "auto")


def default_impl() -> str:
    """``MSVISION_CONV_IMPL`` (one of ``IMPLEMENTATIONS``), "xla" when unset or empty."""
    impl = os.environ.get(IMPL_ENV, "").strip().lower() or "xla"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"{IMPL_ENV}={impl!r}; expected one of {IMPLEMENTATIONS}")
    return impl


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: Padding = ((0, 0), (0, 0)),
           dilation: int = 1, *, impl: str | None = None) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, ...)`` for NHWC/HWIO with a CPU-fast kernel gradient.

    Args:
      x: ``[B, H, W, I]``.
      kernel: ``[kh, kw, I, O]`` (groups = 1), same dtype as ``x``.
      stride, dilation: one value for both spatial axes.
      padding: explicit ``((top, bottom), (left, right))``.
      impl: "xla", "onednn" or "auto" (see the module docstring); None (default):
        ``MSVISION_CONV_IMPL``, else "xla".
    """
    if kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"conv2d supports groups=1 only: kernel {kernel.shape} for input {x.shape}")
    padding = tuple((int(a), int(b)) for a, b in padding)
    impl = default_impl() if impl is None else impl
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown conv2d impl {impl!r}; expected one of {IMPLEMENTATIONS}")
    if impl != "xla":
        from msvision.ops import onednn

        if impl == "onednn" or onednn.auto_enabled(x, kernel, int(stride), padding, int(dilation)):
            return onednn.conv2d(x, kernel, int(stride), padding, int(dilation))
    return conv2d_xla(x, kernel, int(stride), padding, int(dilation))
