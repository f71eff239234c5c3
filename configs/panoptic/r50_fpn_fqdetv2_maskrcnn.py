"""R50 + FPN (P2–P7) + FQDetV2 + Mask R-CNN++, panoptic: thesis table 5.5, Mask R-CNN++ row (300 queries,
12 epochs: PQ 44.8, SQ 80.8, RQ 54.1, PQ_th 50.7, PQ_st 35.9; 40.6 M).

``r50_fpn_fqdetv2_effseg.py`` (COCO panoptic, 133 classes, the thesis's panoptic inference and
post-processing) with the segmentation head of ``configs/effseg/r50_fpn_fqdetv2_maskrcnn.py``;
its class-specific mask logits follow the 133 panoptic classes.

Parameters (trainable): 40 551 416 = R50 23 232 512 + FPN P2–P7 4 524 544 + FQDetV2 with 134 class logits 9 874 547 +
Mask R-CNN++ with 133 class-specific mask logits 2 919 813, vs 40.6 M (−0.12 %; table 5.6 lists the
head alone as 3.0 M, ours 2.92 M: the thesis's two roundings disagree, the full model matches).
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_effseg.py")
    config.model.seg_head = sibling_config(__file__, "../effseg/r50_fpn_fqdetv2_maskrcnn.py").model.seg_head
    config.model.seg_head.inference.score_weighting = False  # class score only (released code)
    return config
