"""R50 + FPN (P2–P7) + FQDetV2 + EffSeg, panoptic: thesis table 5.5, EffSeg row (300 queries,
12 epochs: PQ 46.4, SQ 82.2, RQ 55.3, PQ_th 52.8, PQ_st 36.7; 41.8 M).

The instance-segmentation model of ``configs/effseg/r50_fpn_fqdetv2_effseg.py`` trained on
COCO panoptic (``data.source='coco_panoptic'``): 133 classes (80 things, 53 stuff) plus the
no-object logit, every non-crowd segment a box + mask instance (thesis §5.5, as the released
code). Panoptic inference (thesis §5.4.1; released code: DetSeg ``models/heads/seg/base.py``,
``BaseSegHead.compute_segs``): one label per query (best class, score = its sigmoid:
``labels='per_query_label'``), top 1000, class-aware box NMS at 0.5, no top-100 cap
(``max_detections`` = the 300 queries, so the EffSeg RoI capacity is Q), masks
without mask-score weighting, then the six post-processing steps (``eval.panoptic``: the
thesis's thresholds, void rule as the thesis, ``void_rule='winner_prob'`` for the released
code's).

Parameters (trainable): 41 840 475 = R50 23 232 512 + FPN P2–P7 4 524 544 + FQDetV2 with 134
class logits 9 874 547 + EffSeg 4 208 872, vs 41.8 M (+0.10 %). The 600-query row: set
``model.head.selector.num_queries`` and ``model.head.inference.max_detections`` to 600.

COCO panoptic is expected under ``data/coco`` (``annotations/panoptic_{train,val}2017.json``
and the PNG folders ``annotations/panoptic_{train,val}2017/``, images ``{train,val}2017/``;
``data/README.md``).
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "../effseg/r50_fpn_fqdetv2_effseg.py")
    config.model.num_classes = 133  # set from the dataset by the trainer; here for parameter counts
    head = config.model.head
    head.inference.labels = "per_query_label"
    head.inference.nms_iou = 0.5  # thesis §5.4.1
    head.inference.nms_candidates = 1000
    head.inference.max_detections = head.selector.num_queries  # no top-100 cap
    config.model.seg_head.inference.score_weighting = False  # class score only (released code)
    data = config.data
    data.source = "coco_panoptic"
    for split, name in (("train", "train2017"), ("val", "val2017")):
        data[split].panoptic = f"data/coco/annotations/panoptic_{name}.json"
        data[split].panoptic_dir = f"data/coco/annotations/panoptic_{name}"
        data[split].images = f"data/coco/{name}"
        data[split].annotations = ""
    return config
