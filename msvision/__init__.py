"""msvision: multi-scale computer vision in JAX/Flax (TPN, FQDet/FQDetV2, EffSeg)."""

__version__ = "0.1.0"
