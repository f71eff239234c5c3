"""EffSeg: the segmentation head with Structure-Preserving Sparsity (thesis chapter 5).

Split as the detection heads are (STYLE.md): :mod:`.head` (the network,
:class:`EffSegHead`), :mod:`.targets` (training RoIs and per-cell targets),
:mod:`.criterion` (losses), :mod:`.postprocess` (mask assembly, paste, scores),
:mod:`.modules` (the networks, table 5.7's processing modules).
"""

from msvision.models.heads.effseg.criterion import EffSegCriterion
from msvision.models.heads.effseg.head import EffSegHead
from msvision.models.heads.effseg.postprocess import EffSegPostProcess

__all__ = ["EffSegHead", "EffSegCriterion", "EffSegPostProcess"]
