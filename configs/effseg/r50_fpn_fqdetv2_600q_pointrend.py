"""Table 5.3, FQDetV2 + PointRend++, 600 queries, 12 epochs (the setting of the
released PointRend++ config, DetSeg ``scripts/effseg/instance/r50_fpn_fqdetv2_pointrend_12e.sh``):
``r50_fpn_fqdetv2_pointrend.py`` with 600 queries."""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_pointrend.py")
    config.model.head.selector.num_queries = 600
    return config
