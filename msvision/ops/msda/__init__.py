"""Multi-scale deformable attention (MSDA, Deformable DETR; thesis chapter 4).

One op, several implementations behind ``impl``:

- ``"xla"``: gather-based XLA with a hand-written VJP (:mod:`.xla`); default on CPU
  and TPU, and the fallback everywhere.
- ``"triton"``: Pallas kernels on the Triton backend (:mod:`.triton_kernel`),
  forward and backward, for NVIDIA/AMD GPUs. Isolated in one module because the
  Pallas Triton backend is deprecated from jax 0.11; a Mosaic GPU version can
  replace it behind the same switch.
- ``"auto"`` (:mod:`.auto`): the Triton kernels in code lowered for CUDA/ROCm, XLA
  in code lowered for anything else, chosen inside the traced function
  (``lax.platform_dependent``), so it follows the lowering platform, not the
  machine's backend. On a GPU host the kernel is first checked against XLA on a
  small input (:mod:`msvision.ops.kernel_selfcheck`); if it fails, ``"auto"`` is
  XLA everywhere, with a warning.

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

IMPLEMENTATIONS = ("auto", "xla", "triton", "triton_interpret", "reference")


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
    if impl in ("triton", "triton_interpret"):
        from msvision.ops.msda.triton_kernel import multiscale_deformable_attention_triton

        return multiscale_deformable_attention_triton(
            value, spatial_shapes, sampling_locations, attention_weights,
            interpret=impl == "triton_interpret")
    if impl == "reference":
        return multiscale_deformable_attention_reference(
            value, spatial_shapes, sampling_locations, attention_weights).astype(value.dtype)
    raise ValueError(f"unknown MSDA impl {impl!r}; expected one of {IMPLEMENTATIONS}")
