"""FQDet on the built-in synthetic dataset: the quickstart detector with the FQDet head.

Same data, backbone (narrow ResNet-18 with GroupNorm, trained from scratch), FPN
and schedule as ``configs/quickstart.py``; the RetinaNet head is replaced by the
improved FQDet head (thesis table 4.7: 1 sampling point, inference over (query, class)
pairs) scaled
down: 64-wide queries, 100 queries, 3 decoder layers, FFN 256.

    python train.py --config=configs/fqdet/quickstart_fqdet.py --workdir=runs/quickstart_fqdet
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "../quickstart.py")
    head = module_config("head", "fqdet")
    head.decoder.num_points = 1
    head.inference.labels = "query_class_pairs"
    head.selector.num_queries = 100
    head.selector.hidden_channels = 16
    head.decoder.num_layers = 3
    head.decoder.ffn_dim = 256
    config.model.head = head
    config.optim.lr = 5e-4
    config.optim.backbone_lr = 5e-4
    config.optim.offset_lr = 5e-5
    return config
