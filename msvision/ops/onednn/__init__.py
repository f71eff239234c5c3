"""2-D convolution on the CPU by oneDNN, called through XLA's FFI (opt-in, see :mod:`msvision.ops.conv`).

What: :func:`conv2d` has the signature and semantics of
:func:`msvision.ops.conv.conv2d` (NHWC input, HWIO kernel, explicit padding
``((top, bottom), (left, right))``, one stride and one dilation) plus ``groups``
(``feature_group_count``). Lowered for the CPU, its forward, input gradient and
kernel gradient are three custom calls into oneDNN's convolution primitives
(``conv_kernel.cc``, built and called by :mod:`.ffi`); lowered for any other
platform it is the XLA path of :func:`msvision.ops.conv.conv2d`. float32 and
bfloat16: bf16 inputs give a bf16 output computed with float32 accumulation, the
input gradient in bf16; the kernel gradient leaves oneDNN in float32 and is
rounded once to the kernel's dtype (a custom VJP returns its primal's dtype; the
float32 custom call is :func:`.ffi.backward_weights`). Other dtypes, negative
padding and empty tensors take the XLA path.

Why: XLA:CPU in the pip jaxlib does not use AMX, and its bfloat16 convolution is
slower than its float32 one; oneDNN uses AMX where the CPU has it. A standalone
oneDNN probe (a C++ program timing the forward primitive alone:
``forward_inference``, weights reordered once, 2 OpenMP threads) on a 3×3 256→256
convolution of a 2×100×100 NHWC input, on a CPU with AMX-BF16, December 2026, in
GFLOP/s:

==========  ===================================  ===============  ==========================
dtype       oneDNN v3.2 (implementation)         XLA, jax 0.10.2  torch 2.14.1, channels-last
==========  ===================================  ===============  ==========================
float32     387 (brgconv:avx512_core)            293              376
bfloat16    3,982 (brgconv:avx512_core_amx)      226              2,917
==========  ===================================  ===============  ==========================

Through the custom call, the weights are reordered on every call and the
backward is included; ``benchmarks/bench_onednn_conv.py`` measures that.

Build: on first use (:func:`available`) the system C++ compiler (``$CXX``, else
``c++``, ``g++``, ``clang++``) compiles ``conv_kernel.cc`` with ``-O2 -std=c++17
-shared -fPIC`` against ``jax.ffi.include_dir()`` and the headers of the wheel
``onednn-devel-cpu-gomp``, and links ``-l:libdnnl.so.3`` from the wheel
``onednn-cpu-gomp`` with an rpath to it (the wheels, both 2023.2.0 = oneDNN v3.2
with GNU OpenMP, install into ``<prefix>/include`` and ``<prefix>/lib``; the
extra ``msvision[onednn]`` pulls them in; the ``onednn`` wheel is a SYCL/TBB build
needing Intel runtimes, so not that one). No ``-march=native``: oneDNN generates
its code for the CPU at run time. The library goes to ``$MSVISION_CACHE/onednn_conv``
(default ``~/.cache/msvision/onednn_conv``) under a name keyed by the source, the
compiler and its version, the flags (with the oneDNN and jaxlib paths), the oneDNN
version header and the jaxlib version; a file lock serialises concurrent builds
and an atomic rename publishes the library. The build takes 9 s (two cores busy
with other work). Nothing is built or raised at import time: :func:`available`
builds and registers on its first call and returns False when that fails (no
wheels, no compiler), with the reason in :func:`unavailable_reason`.

Turning it off: ``MSVISION_ONEDNN=off`` (or ``0``, ``false``, ``no``) makes
:func:`available` False without building anything, so ``MSVISION_CONV_IMPL=auto``
takes XLA (and ``onednn`` raises); read at every call.

Threads: oneDNN runs each primitive on a GNU OpenMP team started by the XLA thread
that runs the custom call, ``OMP_NUM_THREADS`` threads (default: one per CPU),
not on XLA's intra-op thread pool; XLA ops running concurrently with a custom call
share the cores with it. OpenMP threads spin for a while after each primitive
before sleeping (``OMP_WAIT_POLICY=passive`` stops that); whether it costs XLA's
ops time is for the benchmarks to show. oneDNN documents run-to-run bitwise
reproducibility for a fixed environment (same CPU, library and number of threads);
it does not promise the same bits for another number of threads. On the AVX2 CPU
of the tests (``test_thread_counts``, float32, 1 vs 2 threads): the forward and
the input gradient are the same bits (the threads split the output, every sum
stays in one thread); the kernel gradient is the same bits at 32 channels but
not at 8, where the threads split the batch and add their partial sums (the
difference is float32 rounding).

Plans: the primitives of each (kind, dtype, shapes, stride, padding, dilation,
groups) are created once per process and kept (0.4–4 ms per plan for the
convolutions of a ResNet on the test CPU, against a forward of a few ms);
every call allocates its own scratchpad, so XLA may run calls concurrently.

Limitations:

- Verified (``tests/ops/test_onednn_conv.py``) only on an AVX2 CPU without AVX-512
  (an AMD EPYC VM, where oneDNN v3.2 picks brgconv:avx2 and jit:avx2). oneDNN
  v3.2 has no bf16 convolution for such a CPU, so there the kernel computes bf16
  with the float32 primitives between bf16 ↔ f32 reorders
  (:func:`.ffi.implementation` ends in ``+f32``; :func:`.ffi.native_bfloat16` is
  False): correct, not fast. The native bf16 primitives, AMX included, which are
  the reason for this package, have not yet been run by the tests.
- ``vmap`` runs the custom calls once per element. The forward and input-gradient
  targets are registered as batch partitionable (on a mesh sharding the batch,
  each device would run its shard), the kernel gradient's is not (its operands
  would be all-gathered); neither has been run on a mesh yet.
- ``jax.export`` refuses the custom calls: export with ``MSVISION_CONV_IMPL=xla``
  (the default).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
from jax import lax

from msvision.ops import platforms
from msvision.ops.conv_xla import conv2d_xla
from msvision.ops.onednn import ffi
from msvision.ops.onednn.ffi import available, unavailable_reason

__all__ = ["conv2d", "available", "unavailable_reason", "auto_enabled"]

Padding = tuple[tuple[int, int], tuple[int, int]]


class OnednnFallbackWarning(UserWarning):
    """The oneDNN kernel could not be built; ``MSVISION_CONV_IMPL=auto`` (the default for
    bfloat16) uses XLA."""


def _xla_conv2d(x, kernel, stride: int, padding: Padding, dilation: int, groups: int):
    """The XLA path: :func:`msvision.ops.conv_xla.conv2d_xla` (groups = 1), else ``lax.conv_general_dilated``."""
    if groups == 1:
        return conv2d_xla(x, kernel, stride, padding, dilation)
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def _forward(x, kernel, stride, padding, dilation, groups, traced_for):
    with platforms.tracing_for(traced_for):
        return platforms.platform_dependent(
            x, kernel,
            cpu=functools.partial(ffi.forward, stride=stride, padding=padding, dilation=dilation, groups=groups),
            default=functools.partial(_xla_conv2d, stride=stride, padding=padding, dilation=dilation, groups=groups))


# traced_for: the platforms of the trace (platforms.traced_platforms()), a static
# argument so that jax's caches of custom_vjp traces, keyed by the static
# arguments, never hand a trace for one platform set to another.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv2d_platform_dependent(x, kernel, stride, padding, dilation, groups, traced_for):
    return _forward(x, kernel, stride, padding, dilation, groups, traced_for)


def _conv2d_fwd(x, kernel, stride, padding, dilation, groups, traced_for):
    return _forward(x, kernel, stride, padding, dilation, groups, traced_for), (x, kernel)


def _conv2d_bwd(stride, padding, dilation, groups, traced_for, residuals, output_grad):
    # One custom VJP with a platform-dependent forward and backward, so no cond is transposed.
    def onednn_backward(x, kernel, output_grad):
        return ffi.backward(stride, padding, dilation, groups, (x, kernel), output_grad)

    def xla_backward(x, kernel, output_grad):
        _, vjp = jax.vjp(lambda x_, k_: _xla_conv2d(x_, k_, stride, padding, dilation, groups), x, kernel)
        return vjp(output_grad)

    with platforms.tracing_for(traced_for):
        return platforms.platform_dependent(*residuals, output_grad, cpu=onednn_backward, default=xla_backward)


_conv2d_platform_dependent.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: Padding = ((0, 0), (0, 0)),
           dilation: int = 1, groups: int = 1) -> jax.Array:
    """:func:`msvision.ops.conv.conv2d` by oneDNN when lowered for the CPU, by XLA elsewhere.

    Args:
      x: ``[B, H, W, C]``.
      kernel: ``[kh, kw, C / groups, O]``, the dtype of ``x``.
      stride, dilation: one value for both spatial axes.
      padding: explicit ``((top, bottom), (left, right))``.
      groups: ``feature_group_count`` of ``lax.conv_general_dilated``.

    Returns:
      ``[B, OH, OW, O]`` in the dtype of ``x``. float32 and bfloat16 with
      non-negative padding go to oneDNN on the CPU (bf16: float32 accumulation);
      anything else, and every other platform, to XLA.

    Raises:
      RuntimeError: the kernel is unavailable (:func:`unavailable_reason`) and the
        convolution is one it would compute.
    """
    stride, dilation, groups = int(stride), int(dilation), int(groups)
    padding = tuple((int(a), int(b)) for a, b in padding)
    if min(stride, dilation, groups) < 1:
        raise ValueError(f"stride, dilation and groups must be >= 1, got {stride}, {dilation}, {groups}")
    if x.shape[-1] != kernel.shape[2] * groups or kernel.shape[3] % groups:
        raise ValueError(f"kernel {kernel.shape} does not fit input {x.shape} with groups={groups}")
    traced_for = platforms.traced_platforms()
    if not ffi.supports(x, kernel, stride, padding, dilation) or "cpu" not in traced_for:
        return _xla_conv2d(x, kernel, stride, padding, dilation, groups)
    if not available():
        raise RuntimeError(f"the oneDNN convolution kernel is unavailable: {unavailable_reason()}")
    return _conv2d_platform_dependent(x, kernel, stride, padding, dilation, groups, traced_for)


@functools.cache
def _warn_unavailable(reason: str) -> None:
    # Once per process (and reason): missing wheels are a setup fact, not news at every trace.
    # Also reached by default: bfloat16 convolutions take "auto" when MSVISION_CONV_IMPL is unset.
    warnings.warn(f"convolutions stay on XLA: the oneDNN convolution kernel is unavailable ({reason}); on a CPU "
                  f"with AMX or AVX512-BF16 it runs bfloat16 convolutions ~10x faster, float32 1.3-1.9x "
                  f"(set {ffi.DISABLE_ENV}=off "
                  f"to silence this)", OnednnFallbackWarning, stacklevel=4)


def auto_enabled(x, kernel, stride: int, padding: Padding, dilation: int) -> bool:
    """Whether ``MSVISION_CONV_IMPL=auto`` takes oneDNN for this convolution (decided at trace time).

    When the CPU is the default backend, the kernel computes the convolution
    (:func:`.ffi.supports`), its dtype is float32, or bfloat16 on a CPU with
    native bf16 convolutions (:func:`.ffi.native_bfloat16`; elsewhere bf16 would
    run as float32 plus conversions), and the kernel is available; a failed build
    warns once. A rule, not a measurement: the benchmarks are to confirm it.
    Never raises.
    """
    try:
        if jax.default_backend() != "cpu" or ffi.disabled():
            return False
        if not ffi.supports(x, kernel, stride, padding, dilation):
            return False
        if not available():
            _warn_unavailable(str(unavailable_reason()))
            return False
        return jnp.dtype(x.dtype) == jnp.float32 or ffi.native_bfloat16()
    except Exception as error:  # noqa: BLE001 - "auto" must never fail because of the optional kernel
        _warn_unavailable(f"{type(error).__name__}: {error}")
        return False
