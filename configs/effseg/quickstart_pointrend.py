"""PointRend++ on the built-in synthetic dataset: the EffSeg quickstart with the head swapped.

``configs/effseg/quickstart_effseg.py`` (same detector, data, one 320² bucket, 600 steps
(8 epochs), optimiser) with PointRend++ (``msvision/models/heads/mask_baselines/pointrend.py``) scaled
down as the EffSeg quickstart's head is:

- the pyramid stays P3–P7, so the coarse 14² samples and the fine-grained point
  features come from P3, the finest level (``point_level=3``; the thesis head reads P2);
- the head is as wide as the pyramid (64): coarse FCN of 2 convolutions instead of 4,
  point head of 3 FCs of 64 (the thesis's 256 = its pyramid width);
- at most 8 training RoIs per image; the point settings are the thesis's (196 training
  points, oversample 3, importance 0.75; 2 subdivision steps of 784 points → 112²,
  the resolution of EffSeg's masks).

    python train.py --config=configs/effseg/quickstart_pointrend.py --workdir=runs/quickstart_pointrend
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "quickstart_effseg.py")
    effseg = config.model.seg_head
    seg = module_config("seg_head", "pointrend")
    seg.point_level = effseg.roi_levels[0]
    seg.roi_convs = effseg.roi_convs
    seg.point_hidden = config.model.neck.channels
    seg.max_train_rois = effseg.max_train_rois
    config.model.seg_head = seg
    return config
