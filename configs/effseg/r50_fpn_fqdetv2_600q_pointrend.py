"""Table 5.3, FQDetV2 + PointRend++, 600 queries, 12 epochs (the released ``sel_v382`` setting,
N§7): ``r50_fpn_fqdetv2_pointrend.py`` with 600 queries."""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_pointrend.py")
    config.model.head.selector.num_queries = 600
    return config
