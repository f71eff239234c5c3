"""R50 + FPN (P2–P7) + FQDetV2 + PointRend++, thesis table 5.3 (FQDetV2, 300 queries, 12 epochs:
40.9 mask AP, 40.8 M).

r50_fpn_fqdetv2_effseg.py (FQDetV2 with 300 queries, 3 aspect ratios, no box scoring, NMS
0.65, thesis §5.4.1) with the head of r50_fpn_fqdet_pointrend.py.

Parameters (trainable): R50 23 232 512 + FPN P2–P7 4 524 544 + FQDetV2 9 860 926 + PointRend++
3 191 968 = 40 809 950, vs 40.8 M (+0.02 %); 600 queries: the same.

Other rows: r50_fpn_fqdetv2_pointrend_2x.py, r50_fpn_fqdetv2_600q_pointrend{,_2x}.py.
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_effseg.py")
    config.model.seg_head = sibling_config(__file__, "r50_fpn_fqdet_pointrend.py").model.seg_head
    return config
