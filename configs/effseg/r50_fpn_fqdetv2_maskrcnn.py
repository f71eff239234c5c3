"""R50 + FPN (P2–P7) + FQDetV2 + Mask R-CNN++, thesis table 5.3 (FQDetV2, 300 queries, 12 epochs:
40.0 mask AP, 40.5 M).

r50_fpn_fqdetv2_effseg.py (FQDetV2 with 300 queries, 3 aspect ratios, no box scoring, NMS
0.65, thesis §5.4.1) with the head of r50_fpn_fqdet_maskrcnn.py.

Parameters (trainable): R50 23 232 512 + FPN P2–P7 4 524 544 + FQDetV2 9 860 926 + Mask R-CNN++
2 906 192 = 40 524 174, vs 40.5 M (+0.06 %); 600 queries: the same.

Other rows: r50_fpn_fqdetv2_maskrcnn_2x.py, r50_fpn_fqdetv2_600q_maskrcnn{,_2x}.py.
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_effseg.py")
    config.model.seg_head = sibling_config(__file__, "r50_fpn_fqdet_maskrcnn.py").model.seg_head
    return config
