"""Full-size parameter counts of the configs/fqdet models vs thesis tables 4.1–4.22.

Counted from abstract shapes (``nnx.eval_shape``, nothing is compiled), as the
thesis counts them: trainable parameters only (the frozen ResNet stem + stage 1 and
the frozen BatchNorm affines are excluded, as in configs/retinanet/r50_tpn_*.py).
Abstract init through ``msvision.models.abstract.abstract_init`` (seconds per row).
"""

import os

import pytest
from flax import nnx

from msvision.config import load_config_file
from msvision.config_schema import section_kwargs
from msvision.models.build import build_model
from msvision.models.heads.fqdet import FQDetHead
from msvision.models.layers import count_variables
from msvision.models.abstract import abstract_init

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# config -> (thesis Params, our FQDet head parameters)
EXPECTED = {
    "r50_tpn_fqdet": (42.6e6, 7_229_470),
    "r50_tpn_fqdet_improved": (42.0e6, 6_674_350),
    "r50_fpn_fqdet": (33.9e6, 6_806_958),
    "r50_fpn_fqdetv2": (37.9e6, 10_820_795),
    "r50_defenc_p3_fqdetv2": (48.1e6, 10_820_795),
    "r50_defenc_p2_fqdetv2": (48.4e6, 10_857_803),
    "swinl_defenc_p3_fqdetv2": (218.7e6, 10_820_795),  # table 4.22
}


def load_config(name):
    return load_config_file(os.path.join(ROOT, "configs", "fqdet", name + ".py"))


def abstract_detector(model_cfg):
    return abstract_init(lambda: build_model(model_cfg, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_params_vs_thesis(name):
    model = abstract_detector(load_config(name).model)
    thesis, head = EXPECTED[name]
    assert count_variables(model.head) == head
    total = count_variables(model, nnx.Param)
    # the thesis rounds to 0.1 M: within half a unit of its last digit, and 0.2 %
    assert abs(total - thesis) <= 0.05e6 and abs(total / thesis - 1) < 0.002, (name, total, thesis)


# Ablation rows of tables 4.2-4.4 on r50_tpn_fqdet: (overrides, thesis Params).
ABLATIONS = {
    "4.2 1 size 1 ratio": (dict(anchors=dict(num_sizes=1, aspect_ratios=(1.0,))), 42.0e6),
    "4.2 3 sizes 1 ratio": (dict(anchors=dict(num_sizes=3, aspect_ratios=(1.0,))), 42.2e6),
    "4.2 1 size 3 ratios": (dict(anchors=dict(num_sizes=1)), 42.2e6),
    "4.3 aux shared": (dict(prediction=dict(aux_losses=True)), 42.6e6),
    "4.3 aux unshared": (dict(prediction=dict(aux_losses=True, aux_shared=False)), 43.5e6),
}


@pytest.mark.parametrize("row", sorted(ABLATIONS))
def test_ablation_rows_vs_thesis(row):
    overrides, thesis = ABLATIONS[row]
    cfg = load_config("r50_tpn_fqdet")
    for section, fields in overrides.items():
        cfg.model.head[section].update(fields)
    total = count_variables(abstract_detector(cfg.model), nnx.Param)
    assert abs(total - thesis) <= 0.05e6, (row, total, thesis)


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
    cls = one_step + lin(d, 81)  # one hidden layer (thesis 4.4.1)
    box = one_step + lin(d, 4)
    expected = selector + transition + box_encoder + 6 * layer + cls + box
    cfg = load_config("r50_tpn_fqdet").model.head
    head = abstract_init(lambda: FQDetHead(80, (3, 4, 5, 6, 7), 256, rngs=nnx.Rngs(0),
                                            **section_kwargs(cfg, FQDetHead, skip=("name",))))
    assert count_variables(head) == expected == EXPECTED["r50_tpn_fqdet"][1]
