"""Attention layers shared by necks and heads (MSDA for DefEncoder and FQDet)."""

from msvision.models.attention.msda import MultiScaleDeformableAttention, sampling_offset_bias_init

__all__ = ["MultiScaleDeformableAttention", "sampling_offset_bias_init"]
