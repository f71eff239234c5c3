"""R50 + FPN (P2–P7) + FQDetV2 + EffSeg, thesis table 5.3 (FQDetV2, 300 queries, 12 epochs:
41.5 mask AP, 41.8 M).

Detector (thesis §5.4.1): the FQDetV2 of ``configs/fqdet/r50_fpn_fqdetv2.py`` (4.5.2) with 300
queries instead of 1500, 3 aspect ratios instead of 7 and no box scoring; NMS 0.65
(the small-scale value of thesis §4.5.2; also the released EffSeg configs, e.g.
DetSeg ``scripts/effseg/instance/r50_fpn_fqdetv2_effseg_12e.sh``). No box encoder (as the
released FQDetV2). Segmentation head, data and schedule: as
``r50_fpn_fqdet_effseg.py``.

Parameters (trainable): 41 826 854 = R50 23 232 512 + FPN P2–P7 4 524 544 + FQDetV2 9 860 926 +
EffSeg 4 208 872, vs 41.8 M (+0.06 %); 600 queries: the same.

Other rows: ``r50_fpn_fqdetv2_effseg_2x.py``, ``r50_fpn_fqdetv2_600q_effseg{,_2x}.py``.
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "../fqdet/r50_fpn_fqdetv2.py")
    head = config.model.head
    head.selector.num_queries = 300
    head.anchors.aspect_ratios = (0.5, 1.0, 2.0)
    head.prediction.box_scoring = False
    head.inference.nms_iou = 0.65
    effseg = sibling_config(__file__, "r50_fpn_fqdet_effseg.py")
    config.model.backbone.out_levels = effseg.model.backbone.out_levels
    config.model.neck.out_levels = effseg.model.neck.out_levels
    config.model.seg_head = effseg.model.seg_head
    config.data.with_masks = True
    config.data.mask_format = effseg.data.mask_format
    config.data.batch_size = effseg.data.batch_size
    config.data.eval_batch_size = effseg.data.eval_batch_size
    config.optim.epochs, config.optim.decay_epochs = effseg.optim.epochs, effseg.optim.decay_epochs
    return config
