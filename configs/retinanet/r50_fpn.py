"""R50-FPN-RetinaNet as in thesis chapter 3 (RetinaNet head with C = 1 hidden conv,
1×1 last layers, losses normalised per feature map; MMDetection FPN with extra
convs on the lateral P5). Set ``--config.model.head.num_convs=4`` for C = 4."""

import ml_collections

from msvision.models.build import default_model_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = default_model_config()
    config.model.num_classes = 80
    # data/optim/train sections added by the training setup
    return config
