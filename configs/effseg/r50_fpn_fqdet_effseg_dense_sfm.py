"""Table 5.7, EffSeg with the DenseSFM (41.1 AP, 38.9 M) processing module: the SFM on every cell of every RoI (no sparsity).

``r50_fpn_fqdet_effseg.py`` (FQDet, 300 queries, 12 epochs, thesis §5.4.4) with
``model.seg_head.processing='dense_sfm'``; the module is described in
``msvision/models/heads/effseg/modules.py`` (its layers are not published).
"""

from msvision.config import sibling_config


def get_config():
    config = sibling_config(__file__, "r50_fpn_fqdet_effseg.py")
    config.model.seg_head.processing = "dense_sfm"
    return config
