"""Multi-scale deformable attention (MSDA, Deformable DETR; thesis chapter 4).

One op, several implementations behind ``impl``:

- ``"xla"``: gather-based XLA with a hand-written VJP (:mod:`.xla`); default on TPU,
  and the fallback everywhere.
- ``"triton"``: Pallas kernels on the Triton backend (:mod:`.triton_kernel`),
  forward and backward, for NVIDIA/AMD GPUs. Isolated in one module because the
  Pallas Triton backend is deprecated from jax 0.11; a Mosaic GPU version can
  replace it behind the same switch.
- ``"cpu"``: a native C++ kernel called through XLA's FFI (:mod:`.cpu_ffi`),
  forward and backward, multi-threaded (parallel value-gradient scatter without
  atomics, the same bits for any thread count); compiled with the system C++
  compiler on first use (cached in ``~/.cache/msvision/msda_cpu``). Raises if it
  cannot be built; ``MSVISION_MSDA_NATIVE=off`` turns it off.
- ``"auto"`` (the default, :mod:`.auto`), chosen inside the traced function
  (``lax.platform_dependent``), so it follows the lowering platform, not the
  machine's backend:

  ========================  ==========================================================
  code lowered for          runs
  ========================  ==========================================================
  CUDA, ROCm                the Triton kernels, once they passed a check against XLA on
                            a small input (:mod:`msvision.ops.kernel_selfcheck`, on a
                            GPU host); else XLA, with a warning
  CPU                       the native kernel (``"cpu"``, threads decided at run time)
                            when the tracing host's default backend is the CPU, the
                            inputs are not float64 and it builds; else XLA (one
                            warning if the build failed, none if turned off)
  TPU, anything else        XLA
  ========================  ==========================================================

  :mod:`msvision.inference.exporter` traces with the native kernel off (XLA on the CPU): an
  artefact must not depend on a custom call that only a process with a compiler has.

:mod:`.reference` is the plain-autodiff transcription of Deformable DETR's
``ms_deform_attn_core_pytorch`` used as documentation and test oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from msvision.ops.msda.reference import level_start_indices, multiscale_deformable_attention_reference
from msvision.ops.msda.xla import multiscale_deformable_attention_xla

__all__ = [
    "multiscale_deformable_attention",
    "multiscale_deformable_attention_reference",
    "multiscale_deformable_attention_xla",
    "level_start_indices",
]

IMPLEMENTATIONS = ("auto", "xla", "cpu", "triton", "triton_interpret", "reference")


def _check_shapes(value, spatial_shapes, sampling_locations, attention_weights):
    batch, total_pixels, heads, _ = value.shape
    expected = sum(h * w for h, w in spatial_shapes)
    if total_pixels != expected:
        raise ValueError(f"value has {total_pixels} positions, spatial_shapes {spatial_shapes} sum to {expected}")
    if sampling_locations.ndim != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be [B, Q, M, L, P, 2], got {sampling_locations.shape}")
    b, q, m, levels, points, _ = sampling_locations.shape
    if (b, m, levels) != (batch, heads, len(spatial_shapes)):
        raise ValueError(f"sampling_locations {sampling_locations.shape} do not match value {value.shape} "
                         f"and {len(spatial_shapes)} levels")
    if attention_weights.shape != (b, q, m, levels, points):
        raise ValueError(f"attention_weights must be {(b, q, m, levels, points)}, got {attention_weights.shape}")


def multiscale_deformable_attention(
    value: jax.Array,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: jax.Array,
    attention_weights: jax.Array,
    *,
    impl: str = "auto",
) -> jax.Array:
    """Multi-scale deformable attention core (Zhu et al., Deformable DETR, eq. 3).

    Exactly the semantics of Deformable DETR's ``ms_deform_attn_core_pytorch``:
    every level is sampled by ``grid_sample(bilinear, padding_mode="zeros",
    align_corners=False)`` and the samples are summed with the attention weights.

    Args:
        value: [B, S, M, C] with S = sum_l H_l * W_l, levels concatenated in order,
            each flattened row-major. Any float dtype.
        spatial_shapes: static ((H_0, W_0), ..., (H_{L-1}, W_{L-1})) (Python ints).
        sampling_locations: [B, Q, M, L, P, 2], (x, y) normalised to the map: (0, 0)
            the top-left corner, (1, 1) the bottom-right corner, pixel (i, j) centred
            at ((j + 0.5) / W, (i + 0.5) / H). Points outside sample zeros.
        attention_weights: [B, Q, M, L, P] (usually a softmax over L * P).
        impl: one of ``IMPLEMENTATIONS`` ("triton_interpret" runs the Pallas kernels
            in interpret mode, for tests on CPU).

    Returns:
        [B, Q, M * C] in ``value.dtype``; accumulation is float32 for every dtype.
    """
    spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    value, sampling_locations, attention_weights = map(jnp.asarray, (value, sampling_locations, attention_weights))
    _check_shapes(value, spatial_shapes, sampling_locations, attention_weights)
    if impl == "auto":
        from msvision.ops.msda.auto import multiscale_deformable_attention_auto

        return multiscale_deformable_attention_auto(value, spatial_shapes, sampling_locations, attention_weights)
    if impl == "xla":
        return multiscale_deformable_attention_xla(value, spatial_shapes, sampling_locations, attention_weights)
    if impl == "cpu":
        from msvision.ops.msda import cpu_ffi

        if not cpu_ffi.available():
            raise RuntimeError(f"MSDA impl='cpu' needs the native kernel, which could not be built: "
                               f"{cpu_ffi.unavailable_reason()}")
        return cpu_ffi.multiscale_deformable_attention_cpu(value, spatial_shapes, sampling_locations,
                                                           attention_weights)
    if impl in ("triton", "triton_interpret"):
        from msvision.ops.msda.triton_kernel import multiscale_deformable_attention_triton

        return multiscale_deformable_attention_triton(
            value, spatial_shapes, sampling_locations, attention_weights,
            interpret=impl == "triton_interpret")
    if impl == "reference":
        return multiscale_deformable_attention_reference(
            value, spatial_shapes, sampling_locations, attention_weights).astype(value.dtype)
    raise ValueError(f"unknown MSDA impl {impl!r}; expected one of {IMPLEMENTATIONS}")
