"""Table 5.3, FQDetV2 + EffSeg, 600 queries, 24 epochs (43.7 mask AP):
``r50_fpn_fqdetv2_600q_effseg.py`` on the 2x schedule (drops after 18 and 22, thesis §5.4.1)."""

from msvision.config import sibling_config
from msvision.train.optimizer import apply_schedule


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdetv2_600q_effseg.py")
    apply_schedule(config.optim, "2x")
    return config
