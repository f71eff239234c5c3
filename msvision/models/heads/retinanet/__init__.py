"""RetinaNet: the chapter 3 detection head (thesis section 3.4.1).

Split as FQDet is: :mod:`.head` (the network and anchors, :class:`RetinaNetHead`),
:mod:`.matcher` (anchor targets), :mod:`.criterion` (focal and box losses, per-level
normalisation), :mod:`.postprocess` (detections).
"""

from msvision.models.heads.retinanet.criterion import RetinaNetCriterion
from msvision.models.heads.retinanet.head import LossNormalizer, RetinaNetHead, SubnetSpec
from msvision.models.heads.retinanet.matcher import RetinaNetMatcher
from msvision.models.heads.retinanet.postprocess import RetinaNetPostProcess

__all__ = ["RetinaNetHead", "RetinaNetMatcher", "RetinaNetCriterion", "RetinaNetPostProcess", "SubnetSpec",
           "LossNormalizer"]
