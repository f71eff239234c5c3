"""R50 + DefEnc-P2 + FQDetV2, thesis tables 4.21–4.22 (24 epochs: 52.8 AP, 48.4 M).

``r50_defenc_p3_fqdetv2.py`` with the encoder on P2–P7 (backbone C2–C5; six
levels for the encoder and the FQDetV2 cross-attention; anchors on P2 too, sizes
4·2^(2+j/3)). Same main-experiment training settings (lr 2e-4, backbone 2e-5,
offsets 1e-4, clip 0.1, 2x schedule).

Memory: the encoder runs with ``remat=True`` (its layers are recomputed in the
backward pass). Without it XLA plans 36.5 GiB of temporaries for a 2×800² train
step, with it 7.9 GiB (CPU backend; 8.7 GiB with the current CPU kernel
gradients); ``--config.model.neck.remat=False`` trades that memory for
about one encoder forward per step.

Parameters (trainable): 48 375 499 = R50 23 232 512 + DefEnc-P2 14 285 184 +
FQDetV2 10 857 803 (six-level MSDA), vs 48.4 M (-0.05 %).

Ablation override: 12 epochs (table 4.21, 51.7 AP):
``--config.optim.epochs=12 --config.optim.decay_epochs='(9,)'``.
"""

import ml_collections

from msvision.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    config = sibling_config(__file__, "r50_defenc_p3_fqdetv2.py")
    config.model.backbone.out_levels = (2, 3, 4, 5)
    config.model.neck.out_levels = (2, 3, 4, 5, 6, 7)
    config.model.neck.remat = True
    return config
