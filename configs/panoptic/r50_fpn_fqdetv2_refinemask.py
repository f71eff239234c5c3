"""R50 + FPN (P2–P7) + FQDetV2 + RefineMask++, panoptic: thesis table 5.5, RefineMask++ row (300 queries,
12 epochs: PQ 46.1, SQ 81.5, RQ 55.2, PQ_th 52.0, PQ_st 37.3; 44.2 M).

``r50_fpn_fqdetv2_effseg.py`` (COCO panoptic, 133 classes, the thesis's panoptic inference and
post-processing) with the segmentation head of ``configs/effseg/r50_fpn_fqdetv2_refinemask.py``;
its class-specific mask logits follow the 133 panoptic classes.

Parameters (trainable): 44 236 096 = R50 23 232 512 + FPN P2–P7 4 524 544 + FQDetV2 with 134 class logits 9 874 547 +
RefineMask++ with 133 classes 6 604 493, vs 44.2 M (+0.08 %; head alone 6.6 M in table 5.6).
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_effseg.py")
    config.model.seg_head = sibling_config(__file__, "../effseg/r50_fpn_fqdetv2_refinemask.py").model.seg_head
    config.model.seg_head.inference.score_weighting = False  # class score only (released code)
    return config
