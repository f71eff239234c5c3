"""Full-size parameter counts of the configs/fqdet models vs thesis tables 4.1–4.22.

Counted from abstract shapes (``nnx.eval_shape``, nothing is compiled), as the
thesis counts them: trainable parameters only (the frozen ResNet stem + stage 1 and
the frozen BatchNorm affines are excluded, as in configs/retinanet/r50_tpn_*.py).
The TPN rows are slow: abstract init of 60 bottlenecks takes about a minute on a
loaded 2-core machine (see tests/models/test_table31_params.py for why).
"""

import importlib.util
import os

import pytest
from flax import nnx

from msvision.models.heads.fqdet import build_fqdet_head
from msvision.models.layers import count_variables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# config -> (thesis Params, our FQDet head parameters)
EXPECTED = {
    "r50_tpn_fqdet": (42.6e6, 7_362_078),
    "r50_tpn_fqdet_improved": (42.0e6, 6_806_958),
    "r50_fpn_fqdet": (33.9e6, 6_806_958),
    "r50_fpn_fqdetv2": (37.9e6, 10_820_795),
    "r50_defenc_p3_fqdetv2": (48.1e6, 10_820_795),
    "r50_defenc_p2_fqdetv2": (48.4e6, 10_857_803),
}


def load_config(name):
    path = os.path.join(ROOT, "configs", "fqdet", name + ".py")
    spec = importlib.util.spec_from_file_location("fqdet_cfg_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def build_detector(model_cfg):
    """``build_model`` once it knows FQDet and the thesis necks; until then the same
    assembly by hand (ResNet → FPN / ``build_neck_thesis`` → ``build_fqdet_head``)."""
    from msvision.models.build import build_model

    try:
        return build_model(model_cfg, rngs=nnx.Rngs(0))
    except ValueError as e:
        if "unknown" not in str(e):
            raise
    from msvision.models.backbones.resnet import ResNet
    from msvision.models.detector import Detector
    from msvision.models.necks.fpn import FPN
    from msvision.models.necks.registry_thesis import build_neck_thesis

    rngs = nnx.Rngs(0)
    b, n, h = model_cfg.backbone, model_cfg.neck, model_cfg.head
    backbone = ResNet(b.depth, out_levels=tuple(b.out_levels), width=b.width, frozen_stages=b.frozen_stages,
                      freeze_bn=b.freeze_bn, rngs=rngs)
    in_channels = {l: backbone.out_channels[l] for l in n.in_levels}
    if n.name == "fpn":
        neck = FPN(in_channels, tuple(n.out_levels), n.channels, variant=n.variant, rngs=rngs)
    else:
        neck = build_neck_thesis(n, in_channels=in_channels, rngs=rngs)
    head = build_fqdet_head(h, num_classes=model_cfg.num_classes, levels=neck.out_levels, channels=neck.channels,
                            rngs=rngs)
    return Detector(backbone, neck, head)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if "_tpn_" in n else n for n in sorted(EXPECTED)]
)
def test_params_vs_thesis(name):
    cfg = load_config(name)
    if cfg.model.neck.name == "defenc":
        pytest.importorskip("msvision.models.necks.defenc")
    model = nnx.eval_shape(lambda: build_detector(cfg.model))
    thesis, head = EXPECTED[name]
    assert count_variables(model.head) == head
    total = count_variables(model, nnx.Param)
    assert abs(total / thesis - 1) < 0.01, (name, total, thesis)


def test_head_param_breakdown():
    """FQDet (thesis 4.4.1, 4 points) at D = 256, K = 80, by hand."""
    d, a, ffn, levels, heads, points = 256, 9, 1024, 5, 8, 4
    lin = lambda i, o: i * o + o  # noqa: E731
    ln = 2 * d
    selector = (ln + lin(d, d)) + (ln + lin(d, 64) + 128 + lin(64 * 9, 64) + 128 + lin(64, d)) + lin(d, a)
    transition = a * (ln + lin(d, d))
    box_encoder = lin(4, d) + ln + lin(d, d)
    msda = lin(d, heads * levels * points * 2) + lin(d, heads * levels * points) + 2 * lin(d, d)
    layer = ln + msda + ln + 4 * lin(d, d) + ln + lin(d, ffn) + lin(ffn, d)
    one_step = ln + lin(d, d)
    cls = 2 * one_step + lin(d, 81)
    box = 2 * one_step + lin(d, 4)
    expected = selector + transition + box_encoder + 6 * layer + cls + box
    cfg = load_config("r50_tpn_fqdet").model.head
    head = nnx.eval_shape(lambda: build_fqdet_head(cfg, num_classes=80, levels=(3, 4, 5, 6, 7), channels=256,
                                                   rngs=nnx.Rngs(0)))
    assert count_variables(head) == expected == EXPECTED["r50_tpn_fqdet"][1]
