"""Structure-Preserving Sparsity (SPS, thesis §5.3.2) and its ops for the EffSeg head.

- :mod:`.container`: the :class:`SPS` pytree, :func:`sps_from_dense` (stage 0),
  :func:`select_and_split` (top-K selection, 2x2 split, id-map remap), capacities.
- :mod:`.id_conv`: :func:`id_conv` (XLA, hand-written VJP), :func:`sfm_xla`, :func:`sps_macs`.
- :mod:`.reference`: dense-convolution oracles.
- :mod:`.triton_kernel`: the fused SFM as a Pallas Triton kernel (forward and backward).

:func:`sfm` is the one place that picks an implementation (``impl``):

- ``"xla"``: three XLA IdConvs (CPU, TPU, and the fallback everywhere);
- ``"triton"``: the Pallas Triton kernels (NVIDIA/AMD GPUs); isolated in one module
  because the Pallas Triton backend is deprecated from jax 0.11;
- ``"triton_interpret"``: the same kernels in Pallas's interpreter (CPU tests);
- ``"auto"``: the Triton kernels when the computation is lowered for CUDA/ROCm, the
  XLA IdConvs otherwise, chosen per lowering platform (``lax.platform_dependent``,
  :mod:`.auto`); on a GPU host the kernel is self-checked against XLA on first use
  (``msvision/ops/kernel_selfcheck.py``, name ``"sfm_triton"``) and falls back to XLA
  with a warning if it fails. :func:`resolve_impl` reports what ``"auto"`` runs on
  the default backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from msvision.ops.sps.container import (CHILD_OFFSETS, SPS, SPSCapacities, select_and_split, sps_capacities,
                                        sps_from_dense)
from msvision.ops.sps.id_conv import TAP_OFFSETS, id_conv, neighbour_ids, sfm_xla, sps_macs

__all__ = [
    "SPS", "SPSCapacities", "sps_capacities", "sps_from_dense", "select_and_split", "CHILD_OFFSETS",
    "id_conv", "neighbour_ids", "sfm", "sfm_xla", "sps_macs", "TAP_OFFSETS", "IMPLEMENTATIONS",
    "resolve_impl",
]

IMPLEMENTATIONS = ("auto", "xla", "triton", "triton_interpret")


def resolve_impl(impl: str) -> str:
    """``"auto"`` -> ``"triton"`` on GPU backends, else ``"xla"``; others are checked and returned."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown SFM impl {impl!r}; expected one of {IMPLEMENTATIONS}")
    if impl == "auto":
        return "triton" if jax.default_backend() == "gpu" else "xla"
    return impl


def sfm(features_table: jax.Array, id_map: jax.Array, act_xy: jax.Array, act_roi: jax.Array,
        weights: jax.Array, biases: jax.Array, dilations: Sequence[int] = (1, 3, 5), *,
        impl: str = "auto") -> jax.Array:
    """Fused SFM core Σ_{d in dilations} ReLU(IdConv3x3_d) on the active cells (thesis §5.3.3).

    Args:
        features_table: [N + 1, F_in] float, [act (A rows); pas; 0] (``SPS.feature_table()``).
        id_map: [R, S, S] int32 feature ids; act_xy: [A, 2] int32 (x, y); act_roi: [A] int32.
        weights: [D, 9·F_in, F_out], rows (ky, kx, channel); biases: [D, F_out].
        dilations: static, one per branch (RefineMask's 1, 3, 5).
        impl: one of ``IMPLEMENTATIONS``.

    Returns:
        [A, F_out] in the table's dtype, accumulated in float32.
    """
    features_table, weights, biases = map(jnp.asarray, (features_table, weights, biases))
    dilations = tuple(int(d) for d in dilations)
    if weights.shape[0] != len(dilations) or biases.shape[0] != len(dilations):
        raise ValueError(f"{len(dilations)} dilations but weights {weights.shape}, biases {biases.shape}")
    if impl == "auto":
        from msvision.ops.sps.auto import sfm_auto

        return sfm_auto(features_table, id_map, act_xy, act_roi, weights, biases, dilations)
    impl = resolve_impl(impl)
    if impl == "xla":
        return sfm_xla(features_table, id_map, act_xy, act_roi, weights, biases, dilations)
    from msvision.ops.sps.triton_kernel import sfm_triton

    return sfm_triton(features_table, id_map, act_xy, act_roi, weights, biases, dilations,
                      interpret=impl == "triton_interpret")
