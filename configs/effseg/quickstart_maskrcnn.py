"""Mask R-CNN++ on the built-in synthetic dataset: the EffSeg quickstart with the head swapped.

``configs/effseg/quickstart_effseg.py`` (narrow ResNet-18 with GroupNorm, 64-wide FPN on
P3–P7, small improved FQDet with 100 queries; same data, one 320² bucket, 600 steps
(8 epochs), optimiser) with Mask R-CNN++ (``msvision/models/heads/mask_baselines/maskrcnn.py``) scaled
down as the EffSeg quickstart's head is:

- the pyramid stays P3–P7, so eq. 5.1 reads P3–P5 with P3 as the finest level
  (``roi_levels=(3, 5)``: boxes under 112 px → P3; the thesis head reads P2–P5);
- the head is as wide as the pyramid (64) and its FCN has 2 convolutions instead of 4;
- at most 8 training RoIs per image.

For comparing heads at equal detector and budget (``quickstart_{effseg,maskrcnn,pointrend}.py``):

    python train.py --config=configs/effseg/quickstart_maskrcnn.py --workdir=runs/quickstart_maskrcnn
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "quickstart_effseg.py")
    effseg = config.model.seg_head
    seg = module_config("seg_head", "maskrcnn")
    seg.roi_levels = effseg.roi_levels
    seg.roi_convs = effseg.roi_convs
    seg.max_train_rois = effseg.max_train_rois
    config.model.seg_head = seg
    return config
