"""Table 5.3, FQDet + EffSeg, 300 queries, 24 epochs (42.4 mask AP): ``r50_fpn_fqdet_effseg.py``
on the 2x schedule (drops after epochs 18 and 22, thesis §5.4.1)."""

from msvision.config import sibling_config
from msvision.train.optimizer import apply_schedule


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdet_effseg.py")
    apply_schedule(config.optim, "2x")
    return config
