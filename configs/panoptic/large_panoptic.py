"""Panoptic segmentation on the large synthetic objects with any of the four chapter 5 heads.

``--config=configs/panoptic/large_panoptic.py:HEAD`` with HEAD one of ``effseg`` (default),
``maskrcnn``, ``pointrend``, ``refinemask``: ``configs/effseg/large_HEAD.py`` (same detector
start, head scaling, optimiser and schedule; its docstring) on the panoptic split of
``data/shapes_large`` (``data.source='coco_panoptic'``): 10 classes, the 6 objects
("things") and sky / grass / water / sand ("stuff"), every segment a box + mask instance
(thesis section 5.4.1). The detector starts from ``configs/effseg/large_detector.py``
(6 classes): its class-specific layers keep their initialisation (``train.init_from``),
so its detection head trains with the segmentation head and the pyramid here (the
backbone stays fixed, ``optim.frozen_parts``).

Panoptic inference as the thesis's (section 5.4.1, as ``configs/panoptic/quickstart_panoptic.py``):
one label per query (its best class, score = that sigmoid), class-aware box NMS at 0.5,
no top-100 cap, masks without score weighting, the six post-processing steps
(``eval.panoptic``), with the minimum segment area (150 px at an ~800 px input) scaled
to the ~448 px input: 150 · (448 / 800)² ≈ 47 px.

    python train.py --config=configs/panoptic/large_panoptic.py:refinemask --workdir=runs/large/panoptic_refinemask
"""

import ml_collections

from msvision.config import sibling_config

HEADS = ("effseg", "maskrcnn", "pointrend", "refinemask")


def get_config(head: str = "effseg") -> ml_collections.ConfigDict:
    if head not in HEADS:
        raise ValueError(f"large_panoptic.py:HEAD with HEAD one of {HEADS}, got {head!r}")
    config = sibling_config(__file__, f"../effseg/large_{head}.py")
    config.data.source = "coco_panoptic"
    config.optim.frozen_parts = ("backbone",)  # the detection head learns the stuff classes
    inference = config.model.head.inference
    inference.labels = "per_query_label"  # one label per query, score = its sigmoid
    inference.nms_iou = 0.5
    inference.nms_candidates = 1000
    inference.max_detections = config.model.head.selector.num_queries  # no top-100 cap
    config.model.seg_head.inference.score_weighting = False  # panoptic score = class score only
    config.eval.box_mask_baseline = False
    config.eval.panoptic.min_area = 47  # 150 px at 800 px input, scaled to ~448 px
    return config
