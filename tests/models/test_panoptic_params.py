"""Parameter count of the panoptic EffSeg config (thesis table 5.5, EffSeg row: 41.8 M) from
abstract shapes: 133 classes + no-object, the EffSeg head unchanged (4,208,872)."""

import pathlib

from flax import nnx

from msvision.analysis.cost import abstract_model
from msvision.config import load_config
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
