"""FQDet and FQDetV2: query-based two-stage detection heads (thesis chapter 4).

:mod:`.head` (the network, :class:`FQDetHead`), :mod:`.matcher` (targets),
:mod:`.criterion` (losses), :mod:`.postprocess` (detections), :mod:`.modules`
(selector, transition, decoder and prediction networks).
"""

from msvision.models.heads.fqdet.criterion import FQDetCriterion
from msvision.models.heads.fqdet.head import DecoderSpec, FQDetHead, PredictionSpec, SelectorSpec
from msvision.models.heads.fqdet.matcher import FQDetMatcher
from msvision.models.heads.fqdet.postprocess import FQDetPostProcess

__all__ = ["FQDetHead", "FQDetMatcher", "FQDetCriterion", "FQDetPostProcess", "SelectorSpec", "DecoderSpec",
           "PredictionSpec"]
