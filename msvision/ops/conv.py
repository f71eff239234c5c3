"""2-D convolution, NHWC inputs and HWIO kernels (groups = 1, explicit padding).

By default XLA's forward and input gradient with a CPU-fast kernel gradient
(:mod:`msvision.ops.conv_xla`: matmuls of im2col windows on the CPU, XLA's own
elsewhere).

Implementation switch (opt-in, for benchmarks of whole networks): ``impl`` of
:func:`conv2d`, by default the environment variable ``MSVISION_CONV_IMPL``, read
when the convolution is traced. jax caches the trace of a Python function, also
across ``jax.jit`` objects: to compare implementations in one process, jit a new
function (a new ``lambda``) after changing the variable.

- ``"xla"``: the above (the default for float32 convolutions);
- ``"onednn"``: oneDNN custom calls for the forward and both gradients when lowered
  for the CPU (:mod:`msvision.ops.onednn`; float32 and bfloat16, non-negative
  padding; other convolutions and other platforms stay as ``"xla"``); raises if the
  oneDNN kernel is unavailable (wheels of the ``onednn`` extra, a C++ compiler);
- ``"auto"``: ``"onednn"`` where :func:`msvision.ops.onednn.auto_enabled` says so
  (the CPU is the default backend, float32, or bfloat16 on a CPU with native bf16
  convolutions, and the kernel builds), else ``"xla"``, with one warning if the
  kernel could not be built. The default for bfloat16 convolutions: on a CPU with
  native bfloat16 convolutions (AMX, AVX512-BF16) oneDNN runs them ~10× faster than
  XLA, whose own bfloat16 convolution is no faster than its float32 one; elsewhere,
  or without the ``onednn`` extra, they stay on XLA.

With the variable unset, float32 stays on XLA (oneDNN is 1.3–1.4× faster for a whole
R50-FPN RetinaNet on an AVX-512 CPU, ``benchmarks/RESULTS.md``, "oneDNN convolution",
but changes results within float32 rounding: opt in with ``auto`` or ``onednn``).

``jax.export`` refuses oneDNN's custom calls: inside :func:`xla_only` (the exporter
uses it) every convolution traces the XLA path whatever the variable says.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import jax
import jax.numpy as jnp

from msvision.ops.conv_xla import Padding, conv2d_xla

IMPL_ENV = "MSVISION_CONV_IMPL"
IMPLEMENTATIONS = ("xla", "onednn", "auto")

_XLA_ONLY = contextvars.ContextVar("conv_xla_only", default=False)


@contextlib.contextmanager
def xla_only():
    """Within this context every :func:`conv2d` traces the XLA path (for ``jax.export``
    artefacts, which cannot hold oneDNN's custom calls). Only traces made inside the
    context are affected: a ``jax.jit`` function traced before keeps its cached trace."""
    token = _XLA_ONLY.set(True)
    try:
        yield
    finally:
        _XLA_ONLY.reset(token)


def default_impl(dtype=jnp.float32) -> str:
    """``MSVISION_CONV_IMPL`` (one of ``IMPLEMENTATIONS``); when unset or empty, "auto"
    for bfloat16 and "xla" for every other dtype."""
    impl = os.environ.get(IMPL_ENV, "").strip().lower()
    if not impl:
        return "auto" if jnp.dtype(dtype) == jnp.bfloat16 else "xla"
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
        ``MSVISION_CONV_IMPL``, else "auto" for bfloat16 and "xla" otherwise.
        Inside :func:`xla_only`, always "xla".
    """
    if kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"conv2d supports groups=1 only: kernel {kernel.shape} for input {x.shape}")
    padding = tuple((int(a), int(b)) for a, b in padding)
    impl = default_impl(x.dtype) if impl is None else impl
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown conv2d impl {impl!r}; expected one of {IMPLEMENTATIONS}")
    if impl != "xla" and not _XLA_ONLY.get():
        from msvision.ops import onednn

        if impl == "onednn" or onednn.auto_enabled(x, kernel, int(stride), padding, int(dilation)):
            return onednn.conv2d(x, kernel, int(stride), padding, int(dilation))
    return conv2d_xla(x, kernel, int(stride), padding, int(dilation))
