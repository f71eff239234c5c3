"""Parameter counts of the thesis EffSeg configs from abstract shapes (nnx.eval_shape): the head
alone is 4,208,872 (4.2 M, T1451), the models are within 0.5 % of table 5.3 and within 0.1 M
of table 5.7 (whose alternative modules are reconstructions, spec §1)."""

import pathlib

import pytest
from flax import nnx

from msvision.analysis.cost import abstract_model
from msvision.config import load_config
from msvision.models.layers import count_variables

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs" / "effseg"


def trainable(name):
    model = abstract_model(load_config(str(CONFIGS / name)).model)
    return count_variables(model, nnx.Param), count_variables(model.seg_head, nnx.Param)


@pytest.mark.parametrize("name,thesis", [("r50_fpn_fqdet_effseg.py", 38.8e6), ("r50_fpn_fqdetv2_effseg.py", 41.8e6),
                                         ("r50_fpn_fqdetv2_600q_effseg_2x.py", 41.8e6)])
def test_table_5_3_models_and_the_head(name, thesis):
    total, head = trainable(name)
    assert head == 4_208_872
    assert abs(total - thesis) <= 0.005 * thesis, total


@pytest.mark.parametrize("module,thesis", [("mlp", 38.4e6), ("conv", 38.5e6), ("deform_conv", 38.5e6),
                                           ("dense_sfm", 38.9e6)])
def test_table_5_7_processing_modules(module, thesis):
    total, head = trainable(f"r50_fpn_fqdet_effseg_{module}.py")
    assert abs(total - thesis) <= 0.1e6, total
    if module == "dense_sfm":
        assert head == 4_208_872  # the SFM's weights, applied densely


def test_analysis_cli_prints_the_counts_by_part(capsys):
    """``python -m msvision.analysis --config=... --params-only --json``: total and per-part
    trainable counts, the EffSeg head alone included (table 5.4's 4.2 M)."""
    import json

    from msvision.analysis.__main__ import main

    assert main([f"--config={CONFIGS / 'r50_fpn_fqdet_effseg.py'}", "--params-only", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    total, head = trainable("r50_fpn_fqdet_effseg.py")
    parts = report["params"]["trainable_by_part"]
    assert report["params"]["trainable"] == total == sum(parts.values())
    assert parts["seg_head"] == head == 4_208_872
