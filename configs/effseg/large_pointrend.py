"""PointRend++ on large objects: the chapter 5 comparison with the point-refinement head.

``configs/effseg/large_effseg.py`` (its docstring says what the four ``large_*`` configs
share and how each head is scaled) with the head swapped.

    python train.py --config=configs/effseg/large_pointrend.py --workdir=runs/large/pointrend
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def get_config() -> ml_collections.ConfigDict:
    effseg = sibling_config(__file__, "large_effseg.py")
    seg = module_config("seg_head", "pointrend")  # coarse 28² FCN on P2, 196 train points, 2 × 784 → 112²
    seg.point_hidden = effseg.model.neck.channels  # the thesis's point FCs are as wide as its pyramid (256)
    seg.max_train_rois = effseg.model.seg_head.max_train_rois
    effseg.model.seg_head = seg
    return effseg
