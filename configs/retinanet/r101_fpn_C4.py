"""R101 + FPN + RetinaNet (C=4), thesis table 3.1 row 8 (40.1 AP, 55.1 M).

Differences from r50_fpn.py only: neck, head C, backbone depth, 3x schedule
(thesis section 3.4.1: 36 epochs, lr drops ×0.1 after epochs 27 and 33; trained on
2 GPUs × 2 images). Parameter count of this implementation: 55 084 788 (55.08 M)
vs table 3.1 55.1 M (-0.03 %).

Parameter counting of the table 3.1 rows: see ``r50_fpn.py``.

FPN variant: the chapter 3 RetinaNet follows detectron2 (thesis 3.4.1), whose FPN
computes P6 from C5 (``variant='retinanet'``): 55 084 788 params = table 3.1. The
MMDetection ``on_lateral`` FPN (``variant='mmdet'``, P6 from the projected P5, used
by chapter 4) would give 50 956 020 (−7.5 %), so it is not the table 3.1 network.
RetinaNet C=4 (4 hidden 3×3 convs per subnet, 1×1 last layers): 4 914 932 params.
"""

import ml_collections

from msvision.config import sibling_config
from msvision.train.optimizer import apply_schedule


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "r50_fpn.py")
    config.model.backbone.depth = 101
    config.model.neck.name = "fpn"
    config.model.neck.variant = "retinanet"  # P6 from C5: detectron2 RetinaNet's FPN (see docstring)
    config.model.head.subnets.num_convs = 4
    apply_schedule(config.optim, "3x")  # thesis 3.4.1: table 3.1 rows train 36 epochs
    return config
