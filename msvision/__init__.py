"""msvision: multi-scale computer vision in JAX/Flax (TPN, FQDet/FQDetV2, EffSeg).

Citations in docstrings and comments: "thesis §x.y", "eq. (x.y)", "table x.y" and
"figure x.y" refer to C. Picron, *Designing High-Performing Networks for Multi-Scale
Computer Vision*, PhD thesis, KU Leuven, 2024. "DetSeg" is the author's public PyTorch
code, https://github.com/CedricPicron/DetSeg (read at commit 585fb7c); paths after it
are relative to that repository.
"""

__version__ = "0.1.0"
