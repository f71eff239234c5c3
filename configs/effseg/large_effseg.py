"""EffSeg on large objects: thesis chapter 5's comparison where a 112² mask has something to resolve.

``configs/effseg/large_{effseg,maskrcnn,pointrend,refinemask}.py`` are identical except
``model.seg_head``. They start from the detector of ``configs/effseg/large_detector.py``
(data, backbone, 64-wide FPN on P2–P7, FQDet; published in the repository) and train the
new head with the pyramid (the FPN), the backbone and the detection head fixed
(``optim.frozen_parts``), with one optimiser, clipping and schedule (:func:`with_head`):
every head starts from the same features and gets boxes from the same detection head.
The thesis trains everything together; training the backbone and detection head too
(1.9 s per EffSeg step against 1.2 s with the whole detector fixed, two CPU cores) would
not fit the 30-minute budget, while a pyramid trained for boxes only starves the heads
that read it where the outline is (EffSeg: Boundary AP 0.269 with the pyramid fixed, 0.350 with it
trained; ``benchmarks/RESULTS.md``, "Mask heads on large objects"). The pyramid receives
the mask loss and, through the fixed detection head, the detection loss (box AP stays
within ±0.01 of the detector's). Each head is scaled down from the thesis's in the same
way and not below its design:

- at the pyramid's width, 64 (the thesis: 256), at the thesis's depth (4-convolution FCNs,
  RefineMask++'s 2 instance and 4 semantic convolutions, PointRend++'s 3 point FCs);
  stage widths halve as in the thesis but not below 16 (``min_stage_channels``): EffSeg
  64 → 32 → 16 → 16, RefineMask++ the same;
- reading the levels the thesis's heads read: RoIAlign on P2–P5 by eq. 5.1 (objects of
  96–400 px land on P2–P4), PointRend++'s points and RefineMask++'s semantic branch on P2,
  EffSeg's stages on P_ks = max(k0 − s, 2) (eq. 5.2);
- refinement budgets at the thesis's per-RoI density, in training as at inference:
  EffSeg refines 100 cells per RoI and stage (``selected_per_roi``; the thesis's K =
  10,000 cells for up to 100 detections), PointRend++ 196 training points and 2 × 784
  subdivision points per RoI (112² masks), RefineMask++ every cell. On these outlines
  (1.7–2.7× longer in cells than COCO's) the thesis's budgets refine 14 % of the 112²
  outline cells for EffSeg and 27 % for PointRend++, which is why PointRend++ leads here
  (``benchmarks/RESULTS.md``, "Why PointRend++ leads"); EffSeg's budget can be given per
  stage, e.g. ``--config.model.seg_head.selected_per_roi=(100,150,300)``;
- at most ``MAX_TRAIN_ROIS`` training RoIs per image for every head (the positives of
  up to 4 objects, the best queries of every object first; ``train/seg/dropped_rois``);
- 50 detections per image at inference (the images hold at most 4 objects);
- 1,500 steps of batch 2, the length at which every head trains within 30 minutes on two
  CPU cores. The curves still rise at step 1,500; with ``--config.train.num_steps=3000``
  they flatten after the decay and rank the heads the same (``benchmarks/RESULTS.md``,
  "The longer schedule").

Evaluation: ``bbox``, ``segm`` (AP_L defined), ``boundary`` (Boundary AP, dilation 2 % of
the image diagonal) and ``box_as_mask`` metrics, every ``eval_every`` steps (the curves).

    MSVISION_CONV_IMPL=auto python train.py --config=configs/effseg/large_effseg.py --workdir=runs/large/effseg

``MSVISION_CONV_IMPL=auto`` runs the convolutions on oneDNN in float32 (the ``onednn``
extra; XLA without it), which every head needs to train within 30 minutes on two CPU cores:
RefineMask++ takes 24 min wall with it, 38 min of steps alone on XLA's convolutions.

The detector comes with the repository: ``benchmarks/weights/large_detector`` holds the
weights of a ``large_detector.py`` run (``python -m msvision.train.publish``; box AP and
provenance in ``benchmarks/RESULTS.md``), the default ``train.init_from``. To train it
yourself (85–90 min on two CPU cores) and use your own:

    python train.py --config=configs/effseg/large_detector.py --workdir=runs/large/detector
    python train.py --config=configs/effseg/large_effseg.py --workdir=runs/large/effseg \
        --config.train.init_from=runs/large/detector

Results: ``benchmarks/RESULTS.md``, "Mask heads on large objects".
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config

MAX_TRAIN_ROIS = 24
MIN_STAGE_CHANNELS = 16
STAGE_BUDGETS = (100, 100, 100)


def with_head(seg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The shared detector, data and training of the four ``large_*`` configs, with ``seg``."""
    config = sibling_config(__file__, "large_detector.py")
    config.model.seg_head = seg
    config.data.with_masks = True
    config.data.batch_size = 2
    config.data.eval_batch_size = 4
    config.train.init_from = "benchmarks/weights/large_detector"  # the published detector (docstring)
    # The backbone and detection head stay the detector's; the pyramid trains with the head.
    config.optim.frozen_parts = ("backbone", "head")
    config.train.num_steps = 1500
    config.optim.epochs = 4  # the decays below, stretched over num_steps
    config.optim.decay_epochs = (3,)
    config.optim.warmup_steps = 50
    config.train.checkpoint_every = 250
    config.train.eval_every = 250
    # The images hold at most 4 objects: 50 detections per image keep every one of them
    # (COCO's AP counts up to 100) at half the heads' inference cost of 100.
    config.model.head.inference.max_detections = 50
    config.eval.box_mask_baseline = True
    config.eval.boundary_ap = True
    config.eval.visualize = 4
    return config


def get_config() -> ml_collections.ConfigDict:
    seg = module_config("seg_head", "effseg")
    seg.min_stage_channels = MIN_STAGE_CHANNELS
    # Cells refined per RoI at stages 1, 2, 3: the thesis's K = 10,000 for up to 100
    # detections at every stage (module docstring). Given per stage, so that a budget that
    # grows with the stage is one override away: selected_per_roi=(100,150,300).
    with seg.ignore_type():  # the signature's default is one ρ for every stage
        seg.selected_per_roi = STAGE_BUDGETS
    seg.max_selected = 1_000_000  # no cap: the budget is ρ · (valid RoIs) per image
    seg.max_train_rois = MAX_TRAIN_ROIS
    return with_head(seg)
