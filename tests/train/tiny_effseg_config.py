"""A tiny EffSeg variant of ``tiny_config.py`` for tests: FQDet head (40 queries, 1 decoder
layer) + EffSeg (16 wide, 2 FCN convs, K = 200) on the 96 px synthetic shapes, with masks.

``get_config("ROOT")`` puts the synthetic dataset under ROOT (a test tmp dir).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import tiny_config  # noqa: E402

from msvision.models.build import module_config  # noqa: E402


def get_config(root: str = "/tmp/msvision_tiny_shapes"):
    config = tiny_config.get_config(root)
    head = module_config("head", "fqdet")
    head.selector.update(num_queries=40, hidden_channels=8)
    head.decoder.update(num_layers=1, num_heads=4, self_attn_heads=4, ffn_dim=32, num_points=1, msda_impl="xla")
    head.inference.update(labels="query_class_pairs", max_detections=20)
    config.model.head = head
    seg = module_config("seg_head", "effseg")
    seg.update(roi_levels=(3, 5), roi_convs=2, max_train_rois=6, max_selected=200, sfm_impl="xla")
    config.model.seg_head = seg
    config.data.with_masks = True
    return config
