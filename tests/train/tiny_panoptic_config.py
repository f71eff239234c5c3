"""A tiny panoptic variant of ``tiny_effseg_config.py`` for tests: the synthetic panoptic
split (things + stuff, ``data.source='coco_panoptic'``) with the panoptic inference settings
of ``configs/panoptic/quickstart_panoptic.py``.

``get_config("ROOT")`` puts the synthetic dataset under ROOT (a test tmp dir).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import tiny_effseg_config  # noqa: E402


def get_config(root: str = "/tmp/msvision_tiny_shapes"):
    config = tiny_effseg_config.get_config(root)
    config.data.source = "coco_panoptic"
    config.data.max_instances = 12  # up to 8 shapes and 2 stuff regions
    head = config.model.head
    head.inference.update(labels="per_query_label", nms_iou=0.5, max_detections=head.selector.num_queries)
    config.model.seg_head.inference.score_weighting = False
    config.eval.panoptic.min_area = 4
    config.eval.panoptic.score_threshold = 0.0  # an untrained model: keep every prediction
    return config
