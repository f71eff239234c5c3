"""A tiny RefineMask++ variant of ``tiny_effseg_config.py`` for tests: the same tiny FQDet
(40 queries, 1 decoder layer) on the 96 px synthetic shapes, with RefineMask++ (16 wide:
F = 16 → 8 → 4 → 2, RoIAlign on P3–P5, semantic branch of 2 convs on P3, 6 training RoIs).

``get_config("ROOT")`` puts the synthetic dataset under ROOT (a test tmp dir).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import tiny_effseg_config  # noqa: E402

from msvision.models.build import module_config  # noqa: E402


def get_config(root: str = "/tmp/msvision_tiny_shapes"):
    config = tiny_effseg_config.get_config(root)
    seg = module_config("seg_head", "refinemask")
    seg.update(roi_levels=(3, 5), semantic_level=3, semantic_convs=2, max_train_rois=6)
    config.model.seg_head = seg
    return config
