"""R50 + FPN (P2–P7) + FQDet + EffSeg, thesis table 5.3 (FQDet, 300 queries, 12 epochs:
41.5 mask AP, 38.8 M) and the SFM row of table 5.7.

Detector (thesis 5.4.1): the FQDet of ``configs/fqdet/r50_fpn_fqdet.py`` (base
FQDet of 4.4.1 with the improvements of 4.4.3: 1 sampling point, inference over
(query, class) pairs, NMS 0.5 of 4.4.1; the released code's two hidden layers in the
cls/box nets) on the
MMDetection FPN extended to P2–P7, anchors on every level P2–P7 (as the
released EffSeg configs).
Segmentation head (thesis 5.3.3): EffSeg with the SFM processing module, 14×14 → 112×112,
K = 10,000 refined cells per image and stage, at most 128 training RoIs per
image (see ``msvision/models/heads/effseg/targets.py``). Training: masks in the batch
as 128² box-frame coverage grids (``data.mask_format='box'``, ``msvision/data/box_masks.py``),
2 GPUs × 1 image (global batch 2), 1x schedule with a single drop after epoch 9 (thesis
5.4.1).

Parameters (trainable; ``python -m msvision.analysis --config=configs/effseg/r50_fpn_fqdet_effseg.py
--skip-timing``): 38 809 894 = R50 23 232 512 + FPN P2–P7 4 524 544 + FQDet 6 843 966 + EffSeg
4 208 872 (4.2 M, thesis table 5.4), vs 38.8 M (+0.03 %).

Other rows: ``r50_fpn_fqdet_effseg_2x.py`` (24 epochs), ``r50_fpn_fqdet_effseg_{mlp,conv,
deform_conv,dense_sfm}.py`` (table 5.7), or override
``--config.model.seg_head.processing=conv``.
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def effseg_head() -> ml_collections.ConfigDict:
    """The thesis's EffSeg head (``model.seg_head``), every field at its default."""
    return module_config("seg_head", "effseg")


def with_effseg(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """P2–P7 pyramid, EffSeg head, masks in the batch, EffSeg's batch and schedule."""
    config.model.backbone.out_levels = (2, 3, 4, 5)
    config.model.neck.out_levels = (2, 3, 4, 5, 6, 7)
    config.model.seg_head = effseg_head()
    config.data.with_masks = True
    # Box-frame masks: a 128x128 coverage grid per object instead of [B, 100, H, W] full-image
    # masks (198 MB per image at 1408²; benchmarks/RESULTS.md, "Training masks at COCO scale").
    config.data.mask_format = "box"
    config.data.batch_size = 2  # thesis §5.4.1: two GPUs, one image each
    config.data.eval_batch_size = 2
    return config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "../fqdet/r50_fpn_fqdet.py")
    return with_effseg(config)
