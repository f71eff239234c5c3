"""EffSeg panoptic segmentation on the built-in synthetic dataset, trained from scratch on a CPU.

The EffSeg quickstart (``configs/effseg/quickstart_effseg.py``) on the panoptic split of
the synthetic shapes (``data.source='coco_panoptic'``): 10 classes, the 6 shapes
("things") and sky / grass / water / sand ("stuff"), every segment a box + mask instance
(thesis §5.5). Panoptic inference as the thesis (§5.4.1): one label per query
(its best class, score = that sigmoid, ``head.inference.labels='per_query_label'``), class-aware
box NMS at 0.5, no top-100 cap (``max_detections`` = the number of queries), masks for
all survivors without mask-score weighting, then the six post-processing steps
(``eval.panoptic``, :mod:`msvision.evaluation.panoptic_postprocess`).

Differences from the thesis (the CPU budget, 20 minutes on 2 cores):

- the EffSeg quickstart's scaled-down network and data (narrow ResNet-18 with GroupNorm,
  64-wide FPN on P3–P7, 100 queries, EffSeg 64 → 8 wide with a 2-conv FCN, K = 500,
  images around 224 px, one 320 × 320 bucket);
- ``max_train_rois`` = 10 (the images have up to 8 shapes and 2 stuff regions);
- 8 epochs (600 steps, batch 8) with one learning-rate drop after epoch 6 (the
  EffSeg 1x schedule's single drop, thesis §5.4.1, at the same fraction);
- the minimum segment area (thesis: 150 px at an ~800 px network input, §5.4.1) scaled to
  the ~224 px input: 150 · (224 / 800)² ≈ 12 px.

Reached (2026-11-30, synthetic val split, step 600): panoptic PQ / SQ / RQ 0.425 / 0.806 /
0.512 (things 0.428, stuff 0.419); with the released code's void rule
(``--config.eval.panoptic.void_rule=winner_prob``) 0.527 / 0.859 / 0.616; the trivial all-sky
prediction 0.007. ``train.py`` 17 min 11 s wall (its evaluation included) on an idle 2-core
machine (2026-12-01; 29 CPU-minutes; ``benchmarks/RESULTS.md``, "Segmentation and panoptic quickstarts").

    python train.py --config=configs/panoptic/quickstart_panoptic.py --workdir=runs/quickstart_panoptic

Evaluation writes ``panoptic/PQ``, ``SQ``, ``RQ``, ``PQ_th``, …, ``PQ_st`` next to the
``bbox``/``segm`` metrics in ``eval/metrics_<step>.json`` and the predictions (COCO
panoptic PNGs + JSON) under ``eval/panoptic_<step>/``.
"""

import ml_collections

from msvision.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "../effseg/quickstart_effseg.py")
    config.data.source = "coco_panoptic"  # the synthetic panoptic split (data_setup.prepare_synthetic)
    head = config.model.head
    head.inference.labels = "per_query_label"  # one label per query, score = its sigmoid (released code)
    head.inference.nms_iou = 0.5  # thesis §5.4.1
    head.inference.nms_candidates = 1000
    head.inference.max_detections = head.selector.num_queries  # no top-100 cap: RoI capacity Q
    seg = config.model.seg_head
    seg.max_train_rois = 10
    seg.inference.score_weighting = False  # panoptic score = class score only (released code)
    config.optim.epochs = 8
    config.optim.decay_epochs = (6,)
    config.eval.box_mask_baseline = False
    config.eval.panoptic.min_area = 12  # 150 px at 800 px input, scaled to ~224 px
    return config
