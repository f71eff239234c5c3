"""Table 5.3, FQDetV2 + PointRend++, 600 queries, 24 epochs: ``r50_fpn_fqdetv2_600q_pointrend.py`` on the
2x schedule (drops after epochs 18 and 22, thesis §5.4.1)."""

from msvision.config import sibling_config
from msvision.train.optimizer import apply_schedule


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_600q_pointrend.py")
    apply_schedule(config.optim, "2x")
    return config
