"""R50 + FPN + (improved) FQDet, thesis table 4.8: the baseline of the FQDetV2 design
experiments (43.0 AP, 33.9 M; 12 epochs).

Differences from ``configs/retinanet/r50_fpn.py``: the head only (the neck is the
MMDetection FPN with extra convs on the lateral P5 and a ReLU before each, thesis
4.5.1, author's fpn_v3). Head: the improved FQDet of 4.4.3 (1 point, 'new'
inference, NMS 0.5); everything else as the base FQDet (see
``r50_tpn_fqdet.py`` for the thesis-vs-released-code choices). 1x schedule with
drops after 9 and 11 (design runs use the FQDet settings, thesis 4.5.1).

Parameters (trainable): 33 908 142 = R50 23 232 512 + FPN 3 868 672 + FQDet
6 806 958, vs 33.9 M (+0.02 %).

Ablation overrides (FQDetV2 design tables, each against this baseline):
  4.10 ratios:      --config.model.head.anchor_aspect_ratios='(0.125,0.25,0.5,1.0,2.0,4.0,8.0)'
                    (5 ratios: '(0.25,0.5,1.0,2.0,4.0)')
  4.11 queries:     --config.model.head.num_queries=1500
  4.12 FFN size:    --config.model.head.ffn_dim=2048
  4.13 cls net:     --config.model.head.cls_net=v2
  4.14 cls loss:    --config.model.head.cls_loss=qfl --config.model.head.cls_loss_weight=0.5
  4.15 box net:     --config.model.head.box_net=v2
  4.16 box loss:    --config.model.head.box_loss=eiou --config.model.head.box_loss_weight=1.85
                    (giou / diou / ciou with box_loss_weight=1.3)
  4.17 box scoring: --config.model.head.box_scoring=True
  4.18 NMS:         --config.model.head.nms_iou=0.65
  4.19 duplicates:  --config.model.head.duplicate_removal=learned   (soft_learned, learn_nms
                    with --config.model.head.nms_iou=0.65)
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.heads.fqdet import default_fqdet_config
from msvision.train.optimizer import apply_schedule


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "../retinanet/r50_fpn.py")
    config.model.head = default_fqdet_config("v1")
    config.model.head.num_points = 1
    config.model.head.inference = "new"
    apply_schedule(config.optim, "1x")
    return config
