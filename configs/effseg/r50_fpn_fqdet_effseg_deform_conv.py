"""Table 5.7, EffSeg with the DeformConv (41.1 AP, 38.5 M) processing module: one deformable 3×3 convolution on the SPS map.

``r50_fpn_fqdet_effseg.py`` (FQDet, 300 queries, 12 epochs, thesis §5.4.4) with
``model.seg_head.processing='deform_conv'``; the module is described in
``msvision/models/heads/effseg/modules.py`` (its layers are not published).
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdet_effseg.py")
    config.model.seg_head.processing = "deform_conv"
    return config
