"""Parameter counts of the thesis EffSeg configs from abstract shapes (nnx.eval_shape): the head
alone is 4,208,872 (4.2 M, thesis table 5.4), the models are within 0.5 % of table 5.3 and within 0.1 M
of table 5.7 (whose alternative modules are reconstructions)."""

import pathlib

import pytest
from flax import nnx

from msvision.analysis.cost import abstract_model
from msvision.config_sections import load_config
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


@pytest.mark.parametrize("floor", [1, 64])
def test_analytic_macs_follow_the_layer_shapes(floor):
    """:func:`effseg_macs`' layer terms = Σ over the head's kernels of (kernel size × rows it is
    applied to), read from the abstract thesis head; also with a width floor
    (``min_stage_channels=64``: stage widths 256, 128, 64, 64)."""
    from msvision.models.heads.effseg.cost import effseg_macs

    config = load_config(str(CONFIGS / "r50_fpn_fqdet_effseg.py"))
    config.model.seg_head.min_stage_channels = floor
    head = abstract_model(config.model).seg_head
    assert head.processors[-1].features == (64 if floor > 1 else 32)
    k = lambda layer: layer.kernel.size  # noqa: E731
    mlp = lambda m: k(m.hidden) + k(m.out)  # noqa: E731
    r, actives = 5, [5 * 196, 400, 1200, 1200]
    expected = k(head.query_fusion.query_proj) * r + mlp(head.query_fusion.fuse) * actives[0]
    expected += sum(k(c) for c in head.fcn) * actives[0]
    expected += (mlp(head.seg_mlps[0]) + mlp(head.ref_mlps[0])) * actives[0]
    passives, previous = 0, actives[0]
    for s in range(3):
        active, parents = actives[s + 1], actives[s + 1] // 4
        passives += previous - parents
        child = head.children_nets[s]
        expected += (k(child.expand) + 4 * k(child.out)) * parents
        expected += mlp(head.neck_fusions[s].fuse) * active + k(head.transitions[s]) * (active + passives)
        proc = head.processors[s]
        expected += (k(proc.first) + k(proc.second) + k(proc.third) + proc.conv_weight.size) * active
        expected += (mlp(head.seg_mlps[s + 1]) + mlp(head.ref_mlps[s + 1])) * active
        previous = active
    macs = effseg_macs(256, r, actives, min_stage_channels=floor)
    sampling = 4 * 256 * sum(actives[1:])  # bilinear neck reads, 4 C per active
    assert macs["total"] - macs["roi_align"] - sampling == expected
