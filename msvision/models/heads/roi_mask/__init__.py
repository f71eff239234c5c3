"""The RoI-mask machinery shared by the chapter-5 mask heads: EffSeg and the ++ baselines
Mask R-CNN++, PointRend++ and RefineMask++ (thesis §5.3.3, §5.4.1).

Each head keeps its own network, losses and mask assembly; this package holds what they
share, the coupling to the detector and the image:

- :mod:`.rois`: training-RoI selection (fixed capacity, overflow counted), the
  unique-query inference buffer, RoI checks and RoI metrics;
- :mod:`.features`: the eq. (5.1) multi-level RoIAlign and the query fusion;
- :mod:`.targets`: per-cell mask targets of the RoI grids;
- :mod:`.postprocess`: mask pasting into the image, the eq. (5.3) mask scoring and the
  inference settings :class:`RoIMaskPostProcess`.
"""

from msvision.models.heads.roi_mask.features import QueryFusion, multilevel_roi_features
from msvision.models.heads.roi_mask.postprocess import (RoIMaskPostProcess, mask_scores, paste_masks, score_and_sort,
                                                        upsample2x)
from msvision.models.heads.roi_mask.rois import (RoIInputs, TrainRoIs, check_pyramid_levels,
                                                 gather_class_inference_rois, gather_inference_rois, gather_train_rois,
                                                 per_detection, roi_labels, roi_metrics, select_train_rois)
from msvision.models.heads.roi_mask.targets import SEG_TARGETS, mask_targets

__all__ = ["QueryFusion", "multilevel_roi_features", "RoIMaskPostProcess", "mask_scores", "paste_masks",
           "score_and_sort", "upsample2x", "RoIInputs", "TrainRoIs", "check_pyramid_levels",
           "gather_class_inference_rois", "gather_inference_rois", "gather_train_rois", "per_detection",
           "roi_labels", "roi_metrics", "select_train_rois", "SEG_TARGETS", "mask_targets"]
