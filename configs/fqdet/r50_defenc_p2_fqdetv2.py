"""R50 + DefEnc-P2 + FQDetV2, thesis tables 4.21–4.22 (24 epochs: 52.8 AP, 48.4 M).

``r50_defenc_p3_fqdetv2.py`` with the encoder on P2–P7 (backbone C2–C5; six
levels for the encoder and the FQDetV2 cross-attention; anchors on P2 too, sizes
4·2^(2+j/3)). Same main-experiment training settings (lr 2e-4, backbone 2e-5,
offsets 1e-4, clip 0.1, 2x schedule).

Parameters (trainable): 48 375 499 = R50 23 232 512 + DefEnc-P2 14 285 184 +
FQDetV2 10 857 803 (six-level MSDA), vs 48.4 M (-0.05 %).

Ablation override: 12 epochs (table 4.21, 51.7 AP):
``--config.optim.epochs=12 --config.optim.decay_epochs='(9,)'``.
"""

import importlib.util
import os

import ml_collections


def _load(relpath: str, name: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), relpath)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config() -> ml_collections.ConfigDict:
    config = _load("r50_defenc_p3_fqdetv2.py", "fqdet_r50_defenc_p3_base").get_config()
    config.model.backbone.out_levels = (2, 3, 4, 5)
    config.model.neck.in_levels = (2, 3, 4, 5)
    config.model.neck.out_levels = (2, 3, 4, 5, 6, 7)
    return config
