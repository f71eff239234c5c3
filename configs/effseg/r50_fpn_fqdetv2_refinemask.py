"""R50 + FPN (P2–P7) + FQDetV2 + RefineMask++, thesis table 5.3 (FQDetV2, 300 queries, 12 epochs:
41.3 mask AP, 44.2 M).

Detector, data, batch and schedule: exactly ``r50_fpn_fqdetv2_effseg.py`` (300 queries,
3 aspect ratios, no box scoring, NMS 0.65). Segmentation head: RefineMask++ as in
``r50_fpn_fqdet_refinemask.py``.

Parameters (trainable): 44 198 572 = R50 23 232 512 + FPN P2–P7 4 524 544 + FQDetV2 9 860 926 +
RefineMask++ 6 580 590, vs 44.2 M (−0.003 %). 600 queries (``--config.model.head.selector.num_queries=600``):
the same count.
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_effseg.py")
    config.model.seg_head = sibling_config(__file__, "r50_fpn_fqdet_refinemask.py").model.seg_head
    return config
