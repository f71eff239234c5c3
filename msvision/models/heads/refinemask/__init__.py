"""RefineMask++: the chapter-5 baseline (thesis §5.4.1; RefineMask, Zhang et al. 2021).

Split as EffSeg: :mod:`.head` (the network, :class:`RefineMaskHead`),
:mod:`.criterion` (the BAR loss), :mod:`.postprocess` (band-overwrite inference),
:mod:`.boundary` (boundary bands, align-corners upsampling), :mod:`.modules` (the
SFM stage, MultiBranchFusionAvg). Training RoIs, mask targets, query fusion, paste and
scores are shared with EffSeg (:mod:`msvision.models.heads.roi_mask`).
"""

from msvision.models.heads.refinemask.criterion import RefineMaskCriterion
from msvision.models.heads.refinemask.head import RefineMaskHead
from msvision.models.heads.refinemask.postprocess import RefineMaskPostProcess

__all__ = ["RefineMaskHead", "RefineMaskCriterion", "RefineMaskPostProcess"]
