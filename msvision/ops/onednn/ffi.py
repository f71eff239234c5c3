"""Build, load and call the oneDNN convolution kernel (``conv_kernel.cc``) through XLA's FFI.

:func:`forward`, :func:`backward_data` and :func:`backward_weights` are the three
custom calls (they lower for the CPU only); :func:`backward` is the VJP made of
the last two. :func:`msvision.ops.onednn.conv2d` puts them behind a ``custom_vjp``
per lowering platform. The package docstring (:mod:`msvision.ops.onednn`) says
why, how the kernel is built, how to turn it off and what has been verified.
"""

from __future__ import annotations

import ctypes
import functools
import os
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.xla_metadata import set_xla_metadata

from msvision.ops import native_build

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv_kernel.cc")
# No -march=native: the kernel only wraps oneDNN, which picks its code for the CPU at run time.
CXX_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-pthread")
LIBRARY_NAME = "libdnnl.so.3"  # oneDNN v3's ABI
RUNTIME_WHEEL = "onednn-cpu-gomp"  # libdnnl.so.3 built with GNU OpenMP, under <prefix>/lib
DEVEL_WHEEL = "onednn-devel-cpu-gomp"  # its headers, under <prefix>/include
INSTALL_HINT = "pip install 'msvision[onednn]' (onednn-cpu-gomp==2023.2.0 and onednn-devel-cpu-gomp==2023.2.0)"

FORWARD_TARGET = "msvision_onednn_conv_forward"
BACKWARD_DATA_TARGET = "msvision_onednn_conv_backward_data"
BACKWARD_WEIGHTS_TARGET = "msvision_onednn_conv_backward_weights"
KINDS = {"forward": 0, "backward_data": 1, "backward_weights": 2}  # conv_kernel.cc's Kind

DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

Padding = tuple[tuple[int, int], tuple[int, int]]

DISABLE_ENV = "MSVISION_ONEDNN"  # "off" / "0" / "false" / "no": never build or use the kernel


def disabled() -> bool:
    """Whether ``MSVISION_ONEDNN`` turns the oneDNN kernel off."""
    return native_build.env_disabled(DISABLE_ENV)


def cache_dir() -> str:
    from msvision.cache import cache_root

    return os.path.join(cache_root(), "onednn_conv")


def _wheel_file(distribution: str, suffix: str) -> str:
    """The absolute path of the installed file of ``distribution`` whose path ends with ``suffix``."""
    try:
        files = metadata.distribution(distribution).files or ()
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"the oneDNN wheel {distribution} is not installed: {INSTALL_HINT}") from None
    for file in files:
        # RECORD paths are relative to site-packages ("../../libdnnl.so.3"); normalise, but
        # keep symbolic links (libdnnl.so.3 is one, to libdnnl.so.3.2).
        path = os.path.normpath(os.path.abspath(str(file.locate())))
        if path.replace(os.sep, "/").endswith("/" + suffix) and os.path.exists(path):
            return path
    raise RuntimeError(f"the wheel {distribution} has no {suffix} (or it was deleted): {INSTALL_HINT}")


def locate_onednn() -> tuple[str, str]:
    """``(include directory, library directory)`` of the installed oneDNN wheels.

    The wheels install outside site-packages, into ``<prefix>/include`` and
    ``<prefix>/lib``; their RECORD (``importlib.metadata``) says where. Both must
    be the same release: the C++ API in the headers calls the library's C API.
    """
    library = _wheel_file(RUNTIME_WHEEL, "lib/" + LIBRARY_NAME)
    header = _wheel_file(DEVEL_WHEEL, "include/oneapi/dnnl/dnnl.hpp")
    versions = metadata.version(RUNTIME_WHEEL), metadata.version(DEVEL_WHEEL)
    if versions[0] != versions[1]:
        raise RuntimeError(f"{RUNTIME_WHEEL} {versions[0]} and {DEVEL_WHEEL} {versions[1]} differ: {INSTALL_HINT}")
    return os.path.dirname(os.path.dirname(os.path.dirname(header))), os.path.dirname(library)


def _compile_flags(include_dir: str) -> tuple[str, ...]:
    return (*CXX_FLAGS, f"-I{include_dir}", f"-I{jax.ffi.include_dir()}")


def _link_flags(library_dir: str) -> tuple[str, ...]:
    # -l:libdnnl.so.3 links the versioned name, the one the runtime wheel ships; the
    # rpath finds it when the library is loaded, whatever the process's LD_LIBRARY_PATH.
    return (f"-L{library_dir}", f"-l:{LIBRARY_NAME}", f"-Wl,-rpath,{library_dir}")


def build() -> str:
    """Compile ``conv_kernel.cc`` against the oneDNN wheels if it is not cached; returns the library's path.

    Keyed by the source, compiler, flags, oneDNN and jaxlib versions in :func:`cache_dir`
    (:mod:`msvision.ops.native_build`); concurrent builds are
    serialised by a file lock and the library is published by an atomic rename.
    """
    include_dir, library_dir = locate_onednn()
    compiler = native_build.find_compiler()
    compile_flags, link_flags = _compile_flags(include_dir), _link_flags(library_dir)
    with open(os.path.join(include_dir, "oneapi", "dnnl", "dnnl_version.h")) as header:
        onednn_version = header.read()  # the flags name the paths; this, the release
    key = native_build.build_key(SOURCE, compiler, compile_flags + link_flags, onednn_version)
    # The libraries after the source: the linker resolves symbols left to right.
    return native_build.compile_cached(cache_dir(), f"onednn_conv_{key}.so",
                                       [compiler, *compile_flags, SOURCE, *link_flags])


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """Builds, loads and registers the kernels once per process: (library, None) or (None, the error)."""
    try:
        library = ctypes.cdll.LoadLibrary(build())
        for target, symbol in ((FORWARD_TARGET, library.MsvisionOnednnConvForward),
                               (BACKWARD_DATA_TARGET, library.MsvisionOnednnConvBackwardData),
                               (BACKWARD_WEIGHTS_TARGET, library.MsvisionOnednnConvBackwardWeights)):
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(symbol), platform="cpu")
        # The forward and the input gradient map each batch element to itself; the
        # kernel gradient sums over the batch and is not batch partitionable.
        for target in (FORWARD_TARGET, BACKWARD_DATA_TARGET):
            jax.ffi.register_ffi_target_as_batch_partitionable(target)
    except Exception as error:  # noqa: BLE001 - any failure means "not available", with the reason kept
        return None, f"{type(error).__name__}: {error}"
    return library, None


def available() -> bool:
    """Whether the kernel is usable: not :func:`disabled`, built and registered (built
    on the first call that is not disabled; never raises)."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    if disabled():
        return f"turned off by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    return _load()[1]


def output_size(size: int, kernel_size: int, stride: int, padding: tuple[int, int], dilation: int) -> int:
    """Output length of one spatial axis (as ``lax.conv_general_dilated``)."""
    return (size + padding[0] + padding[1] - ((kernel_size - 1) * dilation + 1)) // stride + 1


def _problem(x_shape, kernel_shape, stride, padding: Padding, dilation, groups) -> list[int]:
    """conv_kernel.cc's problem: N, H, W, C, OH, OW, O, KH, KW, groups, stride, dilation, top, bottom, left, right."""
    batch, height, width, channels = x_shape
    kh, kw, _, out_channels = kernel_shape
    return [batch, height, width, channels, output_size(height, kh, stride, padding[0], dilation),
            output_size(width, kw, stride, padding[1], dilation), out_channels, kh, kw, groups, stride, dilation,
            *padding[0], *padding[1]]


def implementation(kind: str, x_shape, kernel_shape, dtype, stride: int = 1,
                   padding: Padding = ((0, 0), (0, 0)), dilation: int = 1, groups: int = 1) -> str:
    """The oneDNN implementation the kernel uses for this convolution, e.g. ``"brgconv:avx512_core_amx"``.

    ``kind``: "forward", "backward_data" or "backward_weights". A ``"+f32"`` suffix
    means bfloat16 computed by the float32 primitive (no bf16 convolution on this
    CPU). Builds (and caches) the kernel's plan for it. Raises RuntimeError if the
    kernel is unavailable or oneDNN rejects the convolution.
    """
    if not available():
        raise RuntimeError(f"the oneDNN convolution kernel is unavailable: {unavailable_reason()}")
    problem = (ctypes.c_int64 * 16)(*_problem(x_shape, kernel_shape, stride, padding, dilation, groups))
    text = ctypes.create_string_buffer(512)
    status = _load()[0].MsvisionOnednnConvDescribe(
        ctypes.c_int64(KINDS[kind]), ctypes.c_int64(jnp.dtype(dtype) == jnp.bfloat16), problem, text,
        ctypes.c_int64(len(text)))
    if status != 0:
        raise RuntimeError(f"oneDNN rejects the convolution: {text.value.decode()}")
    return text.value.decode()


@functools.cache
def native_bfloat16() -> bool:
    """Whether oneDNN has bfloat16 convolutions for this CPU (it has none for an
    AVX2-only CPU), rather than the kernel running them as float32 between conversions."""
    return not implementation("forward", (1, 4, 4, 16), (3, 3, 16, 16), jnp.bfloat16, 1,
                              ((1, 1), (1, 1))).endswith("+f32")


def _attributes(stride, padding: Padding, dilation, groups) -> dict:
    return dict(stride=np.int64(stride), dilation=np.int64(dilation), groups=np.int64(groups),
                padding=np.asarray([*padding[0], *padding[1]], np.int64))


def _batch_partitioned():
    """The forward and input-gradient calls have the batch as the leading axis of
    every operand and result, so on a mesh that shards the batch the SPMD
    partitioner may run them per shard (registered as batch partitionable; XLA
    reads the number of batch axes from this frontend attribute)."""
    return set_xla_metadata(num_batch_dims="1")


def forward(x, kernel, stride: int, padding: Padding, dilation: int, groups: int = 1):
    """The forward custom call: ``[N, H, W, C]``, ``[KH, KW, C / groups, O]`` -> ``[N, OH, OW, O]``, dtype of x."""
    batch, _, _, _, out_h, out_w, out_channels = _problem(x.shape, kernel.shape, stride, padding, dilation,
                                                          groups)[:7]
    with _batch_partitioned():
        return jax.ffi.ffi_call(FORWARD_TARGET, jax.ShapeDtypeStruct((batch, out_h, out_w, out_channels), x.dtype),
                                vmap_method="sequential")(x, kernel, **_attributes(stride, padding, dilation, groups))


def backward_data(output_grad, kernel, x_shape, stride: int, padding: Padding, dilation: int, groups: int = 1):
    """The input-gradient custom call: dL/dy ``[N, OH, OW, O]`` -> dL/dx ``x_shape``, dtype of dL/dy."""
    with _batch_partitioned():
        return jax.ffi.ffi_call(BACKWARD_DATA_TARGET, jax.ShapeDtypeStruct(tuple(x_shape), output_grad.dtype),
                                vmap_method="sequential")(output_grad, kernel,
                                                          **_attributes(stride, padding, dilation, groups))


def backward_weights(x, output_grad, kernel_shape, stride: int, padding: Padding, dilation: int, groups: int = 1):
    """The kernel-gradient custom call: x, dL/dy -> dL/dkernel ``kernel_shape`` in float32 (for bf16 inputs too)."""
    return jax.ffi.ffi_call(BACKWARD_WEIGHTS_TARGET, jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32),
                            vmap_method="sequential")(x, output_grad, **_attributes(stride, padding, dilation, groups))


def backward(stride: int, padding: Padding, dilation: int, groups: int, residuals, output_grad):
    """``(dL/dx, dL/dkernel)`` from ``residuals = (x, kernel)`` by the two backward custom calls.

    The kernel gradient comes back in float32 and is rounded once to the kernel's
    dtype (a cotangent has its primal's dtype). XLA drops the input-gradient call
    when nothing uses it (a network's first convolution).
    """
    x, kernel = residuals
    output_grad = output_grad.astype(x.dtype)
    x_grad = backward_data(output_grad, kernel, x.shape, stride, padding, dilation, groups)
    kernel_grad = backward_weights(x, output_grad, kernel.shape, stride, padding, dilation, groups)
    return x_grad, kernel_grad.astype(kernel.dtype)


def supports(x, kernel, stride: int, padding: Padding, dilation: int) -> bool:
    """Whether the kernel computes this convolution: float32 or bfloat16 for both
    operands, non-negative padding, no empty tensor (others go to XLA)."""
    dtypes = {jnp.dtype(x.dtype), jnp.dtype(kernel.dtype)}
    if len(dtypes) != 1 or dtypes.pop() not in DTYPES:
        return False
    if min(min(p) for p in padding) < 0 or 0 in x.shape or 0 in kernel.shape:
        return False
    return all(output_size(x.shape[1 + axis], kernel.shape[axis], stride, padding[axis], dilation) > 0
               for axis in (0, 1))

