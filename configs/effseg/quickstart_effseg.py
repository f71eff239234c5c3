"""EffSeg on the built-in synthetic dataset: instance segmentation trained from scratch on a CPU.

The FQDet quickstart (``configs/fqdet/quickstart_fqdet.py``: narrow ResNet-18 with
GroupNorm, 64-wide FPN on P3–P7, small improved FQDet head with 100 queries) plus the
EffSeg head at the pyramid's width: F = 64 → 32 → 16 → 8 over the 14² → 112² stages,
the SFM processing module. Scaled down for a CPU budget of 20 minutes (the thesis
configs in this folder have the full-size head on P2–P7):

- the pyramid stays P3–P7 (a P2 level would cost the detector ~80 % more at these
  sizes); the head reads P3–P5, eq. 5.1 with P3 as the finest level
  (``roi_levels=(3, 5)``: boxes under 112 px → P3);
- an FCN of 2 convolutions instead of 4;
- at most 8 training RoIs per image (the synthetic images have 0–8 objects and up to
  15 positive queries each; the capacity keeps the best query of every object first,
  overflow is logged as ``train/seg/dropped_rois``);
- K = 500 refined cells per image and stage (thesis: 10,000 for up to 100 RoIs);
- one bucket shape, 320 × 320, for training and evaluation: one train-step and one
  inference compile instead of five (each costs minutes on 2 cores with the head), for
  ~25 % more padded pixels in the backbone and neck.

- 8 epochs (600 steps, batch 8), learning-rate drops after epochs 6 and 7, instead of
  the FQDet quickstart's 12 (900 steps): the head roughly doubles the CPU cost of a step.

What it can and cannot show: it is a fast smoke run of the whole instance-segmentation
path (data with masks, the head, its losses, mask AP, Boundary AP, pictures). It cannot
rank the chapter 5 heads: every synthetic object is under 96² px, so a 112² mask has
cells smaller than an image pixel and the refinement stages have nothing to resolve, the
pyramid stops at P3, the finest stage is 8 channels wide and K = 500 cells are shared by
up to 100 detections at inference (5 per RoI against ~62 in training). The comparison of
the heads is ``configs/effseg/large_*.py`` (``benchmarks/RESULTS.md``, "Mask heads on
large objects"); the quickstarts' side-by-side table ranks EffSeg last and says why.

Same data and optimiser as the FQDet quickstart, with masks in the batch; the mask loss weights, targets and every other
head setting are the thesis's. Evaluation also scores the boxes filled as masks
(``eval.box_mask_baseline``, ``box_as_mask/...`` metrics).

Reached (2026-11-30, synthetic val split, 600 steps): segm AP / AP50 / AP75 0.616 / 0.881 /
0.653 (boxes filled as masks: 0.200 / 0.625 / 0.106; bbox 0.625 / 0.901 / 0.739; Boundary AP
0.447), 17 min 55 s wall for ``train.py`` (its evaluation included) on an idle 2-core machine
(2026-12-01; 29 CPU-minutes); with 12 epochs (900 steps) 0.673 / 0.931 / 0.731 in 43 CPU-minutes
(``benchmarks/RESULTS.md``, "Segmentation and panoptic quickstarts").

    python train.py --config=configs/effseg/quickstart_effseg.py --workdir=runs/quickstart_effseg

Evaluation writes ``bbox`` and ``segm`` metrics (``eval/metrics_<step>.json``).
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "../fqdet/quickstart_fqdet.py")
    seg = module_config("seg_head", "effseg")
    seg.roi_levels = (3, 5)
    seg.roi_convs = 2
    seg.max_train_rois = 8
    seg.max_selected = 500
    config.model.seg_head = seg
    config.data.with_masks = True
    config.data.buckets = ((320, 320),)
    config.optim.epochs = 8
    config.optim.decay_epochs = (6, 7)
    config.eval.box_mask_baseline = True  # box_as_mask/...: the predicted boxes filled as masks
    config.eval.boundary_ap = True  # boundary/...: mask AP with the Boundary IoU (thin parts, curved edges)
    return config
