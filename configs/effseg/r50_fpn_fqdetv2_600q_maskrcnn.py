"""Table 5.3, FQDetV2 + Mask R-CNN++, 600 queries, 12 epochs (the setting of the
released Mask R-CNN++ config, DetSeg ``scripts/effseg/instance/r50_fpn_fqdetv2_maskrcnn_12e.sh``):
``r50_fpn_fqdetv2_maskrcnn.py`` with 600 queries."""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_maskrcnn.py")
    config.model.head.selector.num_queries = 600
    return config
