"""Table 5.7, EffSeg with the Conv (41.1 AP, 38.5 M) processing module: one 3×3 IdConv.

``r50_fpn_fqdet_effseg.py`` (FQDet, 300 queries, 12 epochs, thesis §5.4.4) with
``model.seg_head.processing='conv'``; the module is described in
``msvision/models/heads/effseg/modules.py`` (its layers are not published).
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdet_effseg.py")
    config.model.seg_head.processing = "conv"
    return config
