"""Mask R-CNN++ on large objects: the 28² baseline of the chapter 5 comparison.

``configs/effseg/large_effseg.py`` (its docstring says what the four ``large_*`` configs
share and how each head is scaled) with the head swapped.

    python train.py --config=configs/effseg/large_maskrcnn.py --workdir=runs/large/maskrcnn
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def get_config() -> ml_collections.ConfigDict:
    effseg = sibling_config(__file__, "large_effseg.py")
    seg = module_config("seg_head", "maskrcnn")  # 4-conv FCN, RoIAlign 14² from P2–P5 (eq. 5.1), 28² masks
    seg.max_train_rois = effseg.model.seg_head.max_train_rois
    effseg.model.seg_head = seg
    return effseg
