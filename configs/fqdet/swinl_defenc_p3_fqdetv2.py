"""Swin-L + DefEnc-P3 + FQDetV2, thesis tables 4.21–4.22 (12 epochs: 58.2 AP; 24 epochs: 58.7 AP, 218.7 M).

Differences from ``r50_defenc_p3_fqdetv2.py``: the backbone is Swin-L
(``msvision.models.backbones.swin``) initialised from the official ImageNet-22k
384×384 checkpoint (thesis 2.4; pass ``swin_large_patch4_window12_384_22k.pth`` as
``--config.model.backbone.pretrained=PATH``), as the author builds it with mmdet
(DetSeg ``configs/mmdet/backbones/swin_l_v0.py``): window 12, embed 192, depths
(2, 2, 18, 2), heads (6, 12, 24, 48), C3–C5 with an output LayerNorm each
(``out_indices (1, 2, 3)``), patch norm, stochastic depth 0.2 in training, nothing
frozen (mmdet's ``frozen_stages=-1``: the whole backbone trains). The DefEnc
input projection reads 384/768/1536 channels (DetSeg ``in_proj_v2``).
Learning rates (thesis 4.5.1; DetSeg ``scripts/fqdetv2/swl_def_p3_fqdetv2_12e.sh``):
backbone 1e-5 (Swin-L), MSDA offsets 1e-4, the rest 2e-4, gradient clipping 0.1; 16 images
per batch; 2x schedule (24 epochs, drops after 18 and 23; the released 12-epoch run:
``--config.optim.epochs=12 --config.optim.decay_epochs='(9,)'``).

Parameters (trainable): 218 683 439 = Swin-L 195 200 820 (incl. the three output
norms, 5 376) + DefEnc-P3 12 661 824 + FQDetV2 10 820 795, vs 218.7 M (−0.008 %).
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "r50_defenc_p3_fqdetv2.py")
    config.model.backbone = module_config("backbone", "swin")  # Swin-L, window 12, C3–C5, drop path 0.2
    config.optim.backbone_lr = 1e-5  # thesis 4.5.1: Swin-L backbone
    return config
