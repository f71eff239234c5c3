"""Native CPU multi-scale deformable attention through XLA's FFI (``impl="cpu"``).

The kernels are in ``cpu_kernel.cc`` (forward and backward, on XLA's thread pool or
std::threads, no OpenMP); semantics are exactly those of :func:`multiscale_deformable_attention_xla`.
Why native: XLA:CPU runs the value gradient's scatter-add serially (about half of
the XLA backward, see the :mod:`.xla` docstring); the kernel gives each thread
whole (batch, head) pairs, whose value-gradient rows never collide, so the
scatter-add is parallel without atomics and deterministic.

Build: compiled on first use with the system C++ compiler (``$CXX``, else ``c++``,
``g++``, ``clang++``) with ``-O3 -std=c++17 -shared -fPIC -pthread -march=native``
against ``jax.ffi.include_dir()``, into ``$MSVISION_CACHE/msda_cpu`` (default
``~/.cache/msvision/msda_cpu``), under a name keyed by a hash of the source, the
compiler and its version, the flags, what the compiler resolves ``-march=native``
to on this CPU and the jaxlib version. ``MSVISION_MSDA_MARCH_NATIVE=0`` (or a
compiler that rejects ``-march=native``) builds for the compiler's baseline ISA instead.
Concurrent builds are serialised by a file lock and the library is published by
an atomic rename. Nothing is built or raised at import time: :func:`available`
builds and registers on its first call and returns False when that fails, with
the reason in :func:`unavailable_reason`.

Turning it off: ``MSVISION_MSDA_NATIVE=off`` (or ``0``, ``false``, ``no``) makes
:func:`available` False without building anything, so ``impl="auto"`` takes the XLA
implementation on the CPU (and ``impl="cpu"`` raises); read at every call, so a
test can set it.

Threads: ``num_threads`` is an attribute of the custom call, fixed when the graph
is traced. The default 0 decides at run time, in C++: the work goes to XLA:CPU's
intra-op thread pool (the FFI ``ThreadPool`` context, the pool of XLA's own ops, so
the kernel adds no threads to those XLA runs), else (no pool) to one std::thread per
CPU of the process's affinity mask. A graph traced with 0 (``impl="auto"`` always is)
does not carry the tracing machine's CPU count. The results are the same bits for
every thread count.

Sharding: the custom calls are registered as batch partitionable, so on a mesh
that shards the batch axis each device runs the kernel on its shard (other
shardings are all-gathered by the SPMD partitioner, which is correct but slow).
``vmap`` runs the kernel once per element (``vmap_method="sequential"``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.xla_metadata import set_xla_metadata

from msvision.ops import native_build
from msvision.ops.msda import xla as xla_impl

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernel.cc")
CXX_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread")
# AVX2 on this repository's x86-64 hosts: forward and backward 1.3-1.6x faster than
# the baseline SSE2 build (benchmarks/bench_msda.py shapes, December 2026). The build key then includes the
# CPU the compiler resolves "native" to, so a cache shared between machines (an NFS
# home) never hands one CPU a library built for another.
NATIVE_FLAGS = ("-march=native",)
FORWARD_TARGET = "msvision_msda_cpu_forward"
BACKWARD_TARGET = "msvision_msda_cpu_backward"

SpatialShapes = tuple[tuple[int, int], ...]


DISABLE_ENV = "MSVISION_MSDA_NATIVE"  # "off" / "0" / "false" / "no": never build or use the kernel


def disabled() -> bool:
    """Whether ``MSVISION_MSDA_NATIVE`` turns the native kernel off."""
    return native_build.env_disabled(DISABLE_ENV)


def cache_dir() -> str:
    from msvision.cache import cache_root

    return os.path.join(cache_root(), "msda_cpu")


def _native_target(compiler: str) -> str | None:
    """What the compiler resolves -march=native to, None if unsupported.

    The machine options of its driver's ``-###`` dry run: gcc's ``-march=znver3
    -mavx2 ...``, clang's ``-target-cpu znver3 -target-feature +avx2 ...`` (the rest
    of that output names temporary files and must not enter the cache key).
    """
    result = subprocess.run([compiler, *NATIVE_FLAGS, "-###", "-x", "c++", "-c", os.devnull, "-o", os.devnull],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    tokens = [t.strip("'\"") for t in result.stderr.split()]
    machine = [t for i, t in enumerate(tokens)
               if t.startswith(("-m", "-target-cpu", "-target-feature"))
               or tokens[i - 1].strip() in ("-target-cpu", "-target-feature")]
    return " ".join(machine)


def _compile_cached(compiler: str, flags: Sequence[str], native_target: str | None) -> str:
    key = native_build.build_key(SOURCE, compiler, flags, native_target or "")
    return native_build.compile_cached(cache_dir(), f"msda_cpu_{key}.so",
                                       [compiler, *flags, f"-I{jax.ffi.include_dir()}", SOURCE])


def build() -> str:
    """Compile ``cpu_kernel.cc`` if it is not cached; returns the shared library's path.

    With ``-march=native`` unless ``MSVISION_MSDA_MARCH_NATIVE=0`` or the compiler
    rejects it (then the baseline ISA of the compiler's target).
    """
    compiler = native_build.find_compiler()
    if os.environ.get("MSVISION_MSDA_MARCH_NATIVE", "1") != "0":
        native_target = _native_target(compiler)
        if native_target is not None:
            try:
                return _compile_cached(compiler, (*CXX_FLAGS, *NATIVE_FLAGS), native_target)
            except RuntimeError:
                pass  # e.g. an assembler too old for the host's ISA: build the portable library
    return _compile_cached(compiler, CXX_FLAGS, None)


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the kernels once per process; the error or None."""
    try:
        library = ctypes.cdll.LoadLibrary(build())
        jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(library.MsdaCpuForward), platform="cpu")
        jax.ffi.register_ffi_target(BACKWARD_TARGET, jax.ffi.pycapsule(library.MsdaCpuBackward), platform="cpu")
        for target in (FORWARD_TARGET, BACKWARD_TARGET):
            jax.ffi.register_ffi_target_as_batch_partitionable(target)
    except Exception as error:  # noqa: BLE001 - any failure means "not available", with the reason kept
        return f"{type(error).__name__}: {error}"
    return None


def available() -> bool:
    """Whether the kernel is usable: not :func:`disabled`, built and registered (built
    on the first call that is not disabled; never raises)."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    if disabled():
        return f"turned off by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    return _load()


def _attributes(spatial_shapes: SpatialShapes, num_threads: int) -> dict:
    return dict(spatial_shapes=np.asarray(spatial_shapes, np.int64).reshape(-1),
                num_threads=np.int64(num_threads))


def _batch_partitioned():
    """Every operand and result of both kernels has the batch as its leading axis and
    the batch elements are independent, so on a mesh that shards the batch the SPMD
    partitioner may run the custom call on each shard (the targets are registered as
    batch partitionable; XLA reads the number of batch axes from this frontend
    attribute). Without it the partitioner all-gathers the operands."""
    return set_xla_metadata(num_batch_dims="1")


def _forward(value, spatial_shapes, sampling_locations, attention_weights, num_threads):
    batch, _, heads, channels = value.shape
    queries = sampling_locations.shape[1]
    with _batch_partitioned():
        output = jax.ffi.ffi_call(
            FORWARD_TARGET, jax.ShapeDtypeStruct((batch, queries, heads, channels), jnp.float32),
            vmap_method="sequential",
        )(value.astype(jnp.float32), sampling_locations.astype(jnp.float32), attention_weights.astype(jnp.float32),
          **_attributes(spatial_shapes, num_threads))
    return output.astype(value.dtype).reshape(batch, queries, heads * channels)


def _backward(spatial_shapes, num_threads, residuals, output_grad):
    value, sampling_locations, attention_weights = residuals
    f32 = lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32)
    with _batch_partitioned():
        value_grad, location_grad, weight_grad = jax.ffi.ffi_call(
            BACKWARD_TARGET, (f32(value), f32(sampling_locations), f32(attention_weights)),
            vmap_method="sequential",
        )(value.astype(jnp.float32), sampling_locations.astype(jnp.float32), attention_weights.astype(jnp.float32),
          output_grad.astype(jnp.float32), **_attributes(spatial_shapes, num_threads))
    return (value_grad.astype(value.dtype), location_grad.astype(sampling_locations.dtype),
            weight_grad.astype(attention_weights.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 4))
def _msda_cpu(value, spatial_shapes, sampling_locations, attention_weights, num_threads):
    return _forward(value, spatial_shapes, sampling_locations, attention_weights, num_threads)


def _msda_cpu_fwd(value, spatial_shapes, sampling_locations, attention_weights, num_threads):
    output = _forward(value, spatial_shapes, sampling_locations, attention_weights, num_threads)
    return output, (value, sampling_locations, attention_weights)


_msda_cpu.defvjp(_msda_cpu_fwd, _backward)


def multiscale_deformable_attention_cpu(
    value: jax.Array,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: jax.Array,
    attention_weights: jax.Array,
    num_threads: int | None = 0,
) -> jax.Array:
    """Native CPU MSDA (FFI custom call) with the semantics of :func:`multiscale_deformable_attention_xla`.

    Args:
        value: [B, S, M, C], S = sum_l H_l * W_l (level-major, row-major).
        spatial_shapes: static ((H_0, W_0), ..., (H_{L-1}, W_{L-1})).
        sampling_locations: [B, Q, M, L, P, 2], (x, y) in [0, 1] map coordinates.
        attention_weights: [B, Q, M, L, P].
        num_threads: threads of the kernel (std::thread); 0 or None (default):
            decided at run time (XLA's intra-op thread pool, see the module docstring).

    Returns:
        [B, Q, M * C] in ``value.dtype``. Computed in float32 (half-precision inputs
        are cast to float32 and back); float64 inputs take the XLA implementation.

    Raises:
        RuntimeError: the kernel could not be built (see :func:`unavailable_reason`).
    """
    spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    value, sampling_locations, attention_weights = map(jnp.asarray, (value, sampling_locations, attention_weights))
    if jnp.float64 in (value.dtype, sampling_locations.dtype, attention_weights.dtype):
        return xla_impl.multiscale_deformable_attention_xla(value, spatial_shapes, sampling_locations,
                                                            attention_weights)
    if not available():
        raise RuntimeError(f"MSDA impl='cpu' is unavailable: {unavailable_reason()}")
    num_threads = 0 if num_threads is None else int(num_threads)
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 (0: decided at run time), got {num_threads}")
    return _msda_cpu(value, spatial_shapes, sampling_locations, attention_weights, num_threads)
