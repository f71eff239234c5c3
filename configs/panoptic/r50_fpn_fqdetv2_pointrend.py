"""R50 + FPN (P2–P7) + FQDetV2 + PointRend++, panoptic: thesis table 5.5, PointRend++ row (300 queries,
12 epochs: PQ 46.3, SQ 81.1, RQ 55.6, PQ_th 52.5, PQ_st 37.1; 40.9 M).

``r50_fpn_fqdetv2_effseg.py`` (COCO panoptic, 133 classes, the thesis's panoptic inference and
post-processing) with the segmentation head of ``configs/effseg/r50_fpn_fqdetv2_pointrend.py``;
its class-specific mask logits follow the 133 panoptic classes.

Parameters (trainable): 40 902 806 = R50 23 232 512 + FPN P2–P7 4 524 544 + FQDetV2 with 134 class logits 9 874 547 +
PointRend++ with 133 classes 3 271 203, vs 40.9 M (+0.01 %; head alone 3.3 M in table 5.6).
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_effseg.py")
    config.model.seg_head = sibling_config(__file__, "../effseg/r50_fpn_fqdetv2_pointrend.py").model.seg_head
    config.model.seg_head.inference.score_weighting = False  # class score only (released code)
    return config
