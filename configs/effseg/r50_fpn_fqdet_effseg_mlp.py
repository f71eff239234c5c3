"""Table 5.7, EffSeg with the MLP (40.8 AP, 38.4 M) processing module: pointwise branches, no neighbours.

``r50_fpn_fqdet_effseg.py`` (FQDet, 300 queries, 12 epochs, thesis §5.4.4) with
``model.seg_head.processing='mlp'``; the module is described in
``msvision/models/heads/effseg/modules.py`` (its layers are not published).
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdet_effseg.py")
    config.model.seg_head.processing = "mlp"
    return config
