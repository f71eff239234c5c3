"""Panoptic post-processing of RoI-based instance predictions (thesis T1384–1391, spec §4, N§6.5).

Stuff is predicted like things (box + mask per query, T1610). The detector gives one
label per query (its best class, score ``s`` = that sigmoid), top 1000, class-aware
box NMS at 0.5 and no top-100 cap (``model.head.inference``), and the segmentation head
gives mask probabilities ``p`` for every survivor (no mask-score weighting). Then, per
image at the network-input resolution:

1. drop the predictions with ``s < score_threshold`` (0.3, T1386);
2. mask NMS on ``p > 0.5`` in score order: drop a mask whose IoU with ANY higher-scored
   mask is ``≥ mask_nms_iou`` (0.75, T1387), even when that mask was itself dropped
   (the released code's matrix form, N§6.5);
3. every pixel goes to the mask of highest ``s·p`` (T1388); it is void when that maximum
   is below ``void_threshold`` (0.35; ``void_rule='max_score'``, the thesis) or, with
   ``void_rule='winner_prob'`` (the released code, N§6.5), when the winner's own
   ``p ≤ void_threshold``;
4. drop a prediction when IoU(its region, its ``p > 0.5`` mask) ``< overlap_iou``
   (0.6, T1389): its pixels become void;
5. drop a prediction whose region has fewer than ``min_area`` pixels (150, T1390),
   counted at the network input;
6. merge the segments of one stuff label into one segment, score = their mean (T1391).

Output: the id map resized to the original image size by nearest neighbour (N§6.5;
PyTorch's ``interpolate(mode='nearest')``: source index ``⌊dst · in / out⌋``) and
COCO panoptic ``segments_info`` (segments a resize erased are left out).

Why numpy on the host rather than jit: it runs after the jitted predict step on the
gathered detections, like the COCO mask pasting; the surviving masks (``s ≥ 0.3``,
usually tens) are pasted only there, at each image's own size, so neither a Q-mask
full-image buffer (300 × 800 × 1333 floats) nor a static segment capacity (spec §6's
"best 100") is needed, and each step is a small function tested on hand-made cases.
The comparisons follow the thesis's wording (``<`` 0.3, ``<`` 0.6, fewer than 150);
the released code uses ``≤`` in steps 1, 4 and 5.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

VOID_RULES = ("max_score", "winner_prob")


@dataclasses.dataclass(frozen=True)
class PanopticPostProcess:
    """The six steps (module docstring); config section ``eval.panoptic``.

    Attributes:
      score_threshold: step 1 (0.3, T1386).
      mask_nms_iou: step 2 (0.75, T1387).
      mask_threshold: foreground of ``p`` for masks (0.5, N§6.4).
      void_threshold: step 3 (0.35, T1388).
      void_rule: ``'max_score'`` (thesis: void if max ``s·p`` < threshold) or
        ``'winner_prob'`` (released code: void if the winner's ``p`` ≤ threshold).
      overlap_iou: step 4 (0.6, T1389).
      min_area: step 5, pixels at the network input (150, T1390).
      merge_stuff: step 6 (T1391).
    """

    score_threshold: float = 0.3
    mask_nms_iou: float = 0.75
    mask_threshold: float = 0.5
    void_threshold: float = 0.35
    void_rule: str = "max_score"
    overlap_iou: float = 0.6
    min_area: int = 150
    merge_stuff: bool = True

    def __post_init__(self):
        if self.void_rule not in VOID_RULES:
            raise ValueError(f"eval.panoptic.void_rule must be one of {VOID_RULES}, got {self.void_rule!r}")
