"""RefineMask++ on large objects: the chapter 5 comparison with the thesis's main baseline.

``configs/effseg/large_effseg.py`` (its docstring says what the four ``large_*`` configs
share and how each head is scaled) with the head swapped.

    MSVISION_CONV_IMPL=auto python train.py --config=configs/effseg/large_refinemask.py \
        --workdir=runs/large/refinemask

(0.78 s per step on oneDNN's convolutions, 24 min wall on two CPU cores; 1.50 s per step and
over 30 minutes on XLA's.)
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def get_config() -> ml_collections.ConfigDict:
    effseg = sibling_config(__file__, "large_effseg.py")
    seg = module_config("seg_head", "refinemask")  # 2 instance + 4 semantic convs on P2, dense SFM stages
    seg.min_stage_channels = effseg.model.seg_head.min_stage_channels  # 64 → 32 → 16 → 16, as EffSeg
    seg.max_train_rois = effseg.model.seg_head.max_train_rois
    effseg.model.seg_head = seg
    return effseg
