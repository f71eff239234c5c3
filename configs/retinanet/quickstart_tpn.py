"""The quickstart with a TPN(2, 2) neck: ``configs/quickstart.py`` (narrow ResNet-18
with GroupNorm, RetinaNet head, synthetic shapes, trained from scratch on the CPU)
with the FPN replaced by TPN(L=2, B=2) at width 64 (bottleneck hidden size 16).

Every layer of it is padding-aware, so an image's detections do not depend on the
batch it is evaluated in; check it from the command line:

    python train.py --config=configs/retinanet/quickstart_tpn.py --workdir=runs/qs_tpn
    python eval.py --config=configs/retinanet/quickstart_tpn.py --workdir=runs/qs_tpn --config.data.eval_batch_size=1
    python eval.py --config=configs/retinanet/quickstart_tpn.py --workdir=runs/qs_tpn \\
        --config.data.eval_batch_size=8 '--config.data.buckets=((448,448),)'

The two ``eval/results_<step>.json`` agree (``tests/models/test_padding_invariance.py``
checks the same on test-size models).
"""

import ml_collections

from msvision.config import sibling_config
from msvision.models.build import module_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "../quickstart.py")
    config.model.neck = module_config("neck", "tpn")
    config.model.neck.num_layers = 2
    config.model.neck.num_bottlenecks = 2
    config.model.neck.channels = 64
    config.model.neck.hidden_channels = 16
    return config
