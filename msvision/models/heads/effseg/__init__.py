"""EffSeg: the segmentation head with Structure-Preserving Sparsity (thesis chapter 5).

Split as the detection heads are: :mod:`.head` (the network,
:class:`EffSegHead`), :mod:`.criterion` (losses), :mod:`.postprocess` (mask assembly from
the SPS stages), :mod:`.modules` (the networks, table 5.7's processing modules),
:mod:`.cost` (analytic MACs). Training RoIs, mask targets, query fusion, paste and the
eq. 5.3 scores are shared with the baselines: :mod:`msvision.models.heads.roi_mask`.
"""

from msvision.models.heads.effseg.criterion import EffSegCriterion
from msvision.models.heads.effseg.head import EffSegHead

__all__ = ["EffSegHead", "EffSegCriterion"]
