"""Parameter count of the panoptic EffSeg config (thesis table 5.5, EffSeg row: 41.8 M) from
abstract shapes: 133 classes + no-object, the EffSeg head unchanged (4,208,872)."""

import pathlib

import pytest

from flax import nnx

from msvision.analysis.cost import abstract_model
from msvision.config_sections import load_config
from msvision.models.layers import count_variables

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def test_table_5_5_effseg_row():
    config = load_config(str(CONFIGS / "panoptic" / "r50_fpn_fqdetv2_effseg.py"))
    assert config.model.num_classes == 133 and config.data.source == "coco_panoptic"
    model = abstract_model(config.model)
    total = count_variables(model, nnx.Param)
    assert abs(total - 41.8e6) <= 0.005 * 41.8e6, total
    assert count_variables(model.seg_head, nnx.Param) == 4_208_872
    instance = abstract_model(load_config(str(CONFIGS / "effseg" / "r50_fpn_fqdetv2_effseg.py")).model)
    # 53 more classes: one more row of the 256-wide classification layer each.
    assert total - count_variables(instance, nnx.Param) == 53 * 257


@pytest.mark.parametrize("name,thesis,head_80", [("maskrcnn", 40.6e6, 2_906_192), ("pointrend", 40.9e6, 3_191_968),
                                                 ("refinemask", 44.2e6, 6_580_590)])
def test_table_5_5_baseline_rows(name, thesis, head_80):
    """The ++ baselines' class-specific mask logits follow the 133 panoptic classes (the builder
    supplies ``model.num_classes`` to the seg head): the head grows by exactly what its class
    outputs grow, and the model lands within 0.5 % of table 5.5 (40.6 / 40.9 / 44.2 M)."""
    config = load_config(str(CONFIGS / "panoptic" / f"r50_fpn_fqdetv2_{name}.py"))
    model = abstract_model(config.model)
    total = count_variables(model, nnx.Param)
    assert abs(total - thesis) <= 0.005 * thesis, total
    head = count_variables(model.seg_head, nnx.Param)
    assert model.seg_head.num_classes == 133
    # 53 more classes; per class: Mask R-CNN++ one 256-wide 1×1 predictor row (+ bias);
    # PointRend++ that, plus the coarse-logit input and the output of each of the point head's
    # 3 FCs and its predictor; RefineMask++: its class-specific stage-0 and per-stage logits.
    grown = head - head_80
    assert grown > 0 and grown % 53 == 0, grown
    if name == "maskrcnn":
        assert grown == 53 * 257
