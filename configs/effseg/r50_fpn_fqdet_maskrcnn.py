"""R50 + FPN (P2–P7) + FQDet + Mask R-CNN++, thesis table 5.3 (FQDet, 300 queries, 12 epochs:
40.0 mask AP, 37.5 M).

``r50_fpn_fqdet_effseg.py`` (same detector, data, batch and 1x schedule with one drop after
epoch 9) with the EffSeg head replaced by Mask R-CNN++ (thesis §5.4.1,
``msvision/models/heads/mask_baselines/maskrcnn.py``): RoIAlign 14² on P2–P5 (eq. 5.1),
EffSeg's query fusion without position encoding, mmdet's FCN mask head (4 convs, deconv,
80 class-specific 28² logits), the crop-resized binary ground truth as target, BCE mean
per RoI; at most 128 training RoIs per image; eq. 5.3 mask-score weighting at inference.

Parameters (trainable; ``python -m msvision.analysis --params-only --json --config=...``):
R50 23 232 512 + FPN P2–P7 4 524 544 + FQDet 6 843 966 + Mask R-CNN++ 2 906 192 (2.9 M,
thesis table 5.4) = 37 507 214, vs 37.5 M (+0.02 %).

Other rows: ``r50_fpn_fqdet_maskrcnn_2x.py``; FQDetV2: ``r50_fpn_fqdetv2_maskrcnn*.py``.
"""

from msvision.config import sibling_config
from msvision.models.build import module_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdet_effseg.py")
    config.model.seg_head = module_config("seg_head", "maskrcnn")
    return config
