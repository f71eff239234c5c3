"""R50 + TPN(L=1, B=7) + RetinaNet (C=1), thesis table 3.1 row 1 (41.3 AP, 36.3 M).

Differences from r50_tpn_L3B2.py only: L and B (that file differs from r50_fpn.py in neck, head C, 3x schedule
(thesis section 3.4.1: 36 epochs, lr drops ×0.1 after epochs 27 and 33; trained on
2 GPUs × 2 images)). Parameter count of this implementation: 36 337 396 (36.34 M)
vs table 3.1 36.3 M (+0.10 %).

Same construction and counting rules as r50_tpn_L3B2.py (read its docstring);
only L, B differ.
"""

import ml_collections

from msvision.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "r50_tpn_L3B2.py")
    config.model.neck.num_layers = 1
    config.model.neck.num_bottlenecks = 7
    return config
