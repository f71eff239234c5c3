"""Test-size R-18 + DefEnc-P3 + FQDetV2: ``configs/fqdet/r50_defenc_p3_fqdetv2.py`` shrunk.

``get_config()`` for ``--config=`` and :func:`shrink` for a loaded config. One encoder
layer and one decoder layer (``MSDA_LAYERS`` = 2 MSDA calls per forward pass).
"""

import os

from msvision.config_sections import load_config

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "fqdet", "r50_defenc_p3_fqdetv2.py")
ENCODER_LAYERS, DECODER_LAYERS = 1, 1
MSDA_LAYERS = ENCODER_LAYERS + DECODER_LAYERS


def shrink(config):
    model = config.model
    model.backbone.depth, model.backbone.width = 18, 8
    model.neck.update(channels=32, num_layers=ENCODER_LAYERS, num_heads=2, num_points=1, ffn_dim=32)
    head = model.head
    head.selector.update(num_queries=40, hidden_channels=8)
    head.decoder.update(num_layers=DECODER_LAYERS, num_heads=2, self_attn_heads=2, ffn_dim=32)
    head.inference.update(nms_candidates=60, max_detections=20)
    return config


def get_config():
    return shrink(load_config(CONFIG))
