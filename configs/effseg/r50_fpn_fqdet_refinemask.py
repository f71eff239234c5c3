"""R50 + FPN (P2–P7) + FQDet + RefineMask++, thesis table 5.3 (FQDet, 300 queries, 12 epochs:
41.3 mask AP, 41.2 M).

Detector, data, batch and schedule: exactly ``r50_fpn_fqdet_effseg.py`` (the ++ baselines share
EffSeg's detector, RoIs and scoring, thesis §5.4.1). Segmentation head: RefineMask++
(``msvision/models/heads/refinemask``; released code DetSeg ``models/modules/refine_mask.py``):
RoIAlign 14 from P2–P5 (eq. 5.1), query fusion without position encoding, 2 instance convs,
semantic branch of 4 convs on P2, 3 SFM stages 14 → 28 → 56 with MultiBranchFusionAvg,
class-specific logits at 14/28/56 and class-agnostic ones at 56 upsampled to 112; BAR loss (width
2, weights 0.5/0.75/0.75/1.0) on the RoIAlign-average targets of the released code; inference
overwrites the width-1 band from 28².
No semantic loss: the released ``SimpleRefineMaskHead`` the thesis uses (§5.4.1) has none
(``--config.model.seg_head.loss.semantic_weight=1.0`` adds the original RefineMask's).

Parameters (trainable; ``python -m msvision.analysis --config=configs/effseg/r50_fpn_fqdet_refinemask.py
--params-only``): 41 181 612 = R50 23 232 512 + FPN P2–P7 4 524 544 + FQDet 6 843 966 + RefineMask++
6 580 590 (6.6 M, thesis table 5.4; the released head exactly), vs 41.2 M (−0.04 %).
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def refinemask_head() -> ml_collections.ConfigDict:
    """The thesis's RefineMask++ head (``model.seg_head``), every field at its default."""
    return module_config("seg_head", "refinemask")


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "r50_fpn_fqdet_effseg.py")
    config.model.seg_head = refinemask_head()
    return config
