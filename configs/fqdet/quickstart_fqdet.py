"""FQDet on the built-in synthetic dataset: the quickstart detector with the FQDet head.

Same data, backbone (narrow ResNet-18 with GroupNorm, trained from scratch), FPN
and schedule as ``configs/quickstart.py``; the RetinaNet head is replaced by the
improved FQDet head (thesis table 4.7: 1 sampling point, "new" inference) scaled
down: 64-wide queries, 100 queries, 3 decoder layers, FFN 256.

    python train.py --config=configs/fqdet/quickstart_fqdet.py --workdir=runs/quickstart_fqdet
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.heads.fqdet import default_fqdet_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "../quickstart.py")
    head = default_fqdet_config("v1")
    head.num_points = 1
    head.inference = "new"
    head.num_queries = 100
    head.num_layers = 3
    head.ffn_dim = 256
    head.selector_hidden = 16
    config.model.head = head
    config.optim.lr = 5e-4
    config.optim.backbone_lr = 5e-4
    config.optim.offset_lr = 5e-5
    return config
