"""The chapter 5 mask baselines "++" (thesis §5.4.1): Mask R-CNN++ and PointRend++.

Both share EffSeg's detector coupling (training RoIs, the unique-query inference buffer),
query fusion (without the position encoding) and eq. 5.3 scoring, from
:mod:`msvision.models.heads.roi_mask`; their masks are class-specific.

- :mod:`.maskrcnn`: :class:`MaskRCNNHead` (``seg_head.name='maskrcnn'``), 28×28 masks.
- :mod:`.pointrend`: :class:`PointRendHead` (``'pointrend'``), coarse 28×28 + point head,
  subdivision to 112×112 (thesis) or 224×224 (released code).
- :mod:`.modules` (FCN mask head, deconvolution, point head), :mod:`.points` (uncertain
  point selection, subdivision), :mod:`.targets` (crop-resize and point targets),
  :mod:`.class_logits` (class-specific logits, losses), :mod:`.cost` (analytic MACs).
"""

from msvision.models.heads.mask_baselines.maskrcnn import MaskRCNNHead
from msvision.models.heads.mask_baselines.pointrend import PointRendHead

__all__ = ["MaskRCNNHead", "PointRendHead"]
