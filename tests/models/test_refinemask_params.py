"""Parameter counts of the RefineMask++ configs from abstract shapes (nnx.eval_shape): the head
alone is 6,580,590 (6.6 M, thesis table 5.4; the released SimpleRefineMaskHead with EffSeg's
query fusion) and the models are within 0.5 % of table 5.3 (41.2 M FQDet, 44.2 M FQDetV2)."""

import pathlib

import pytest
from flax import nnx

from msvision.analysis.cost import abstract_model
from msvision.config_sections import load_config
from msvision.models.layers import count_variables

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs" / "effseg"


def released_head_params(c=256, classes=80, dilations=3, instance_convs=2, semantic_convs=4, stages=3):
    """The count written from the released modules (DetSeg ``models/modules/refine_mask.py``):
    query fusion, 3×3 ConvModules, per stage semantic_transform_in, fuse 1×1,
    MultiBranchFusionAvg, fuse_transform_out, stage logits (class-agnostic last)."""
    conv3 = lambda i, o: 9 * i * o + o  # noqa: E731
    lin = lambda i, o: i * o + o  # noqa: E731
    total = lin(c, c) + lin(2 * c, c) + lin(c, c)  # query fusion
    total += (instance_convs + semantic_convs) * conv3(c, c)
    f = c
    for _ in range(stages):
        total += lin(c, f) + lin(2 * f + 1, f) + dilations * conv3(f, f) + lin(f, f) + lin(f, f // 2 - 1)
        total += lin(f, classes)
        f //= 2
    return total + lin(f, 1)


def trainable(name):
    model = abstract_model(load_config(str(CONFIGS / name)).model)
    return count_variables(model, nnx.Param), count_variables(model.seg_head, nnx.Param)


@pytest.mark.parametrize("name,thesis", [("r50_fpn_fqdet_refinemask.py", 41.2e6),
                                         ("r50_fpn_fqdetv2_refinemask.py", 44.2e6)])
def test_table_5_3_models_and_the_head(name, thesis):
    total, head = trainable(name)
    assert head == released_head_params() == 6_580_590
    assert abs(total - thesis) <= 0.005 * thesis, total


def test_quickstart_head_follows_the_same_formula():
    """The quickstart (64 wide, 2 semantic convs, P3 semantic branch) is the same network scaled."""
    config = load_config(str(CONFIGS / "quickstart_refinemask.py"))
    assert config.model.seg_head.semantic_level == 3 and config.model.neck.out_levels[0] == 3
    model = abstract_model(config.model)
    assert count_variables(model.seg_head, nnx.Param) == released_head_params(
        c=64, classes=config.model.num_classes, semantic_convs=2)


@pytest.mark.parametrize("floor", [1, 64])
def test_analytic_macs_follow_the_layer_shapes(floor):
    """:func:`refinemask_macs`' layer terms = Σ over the thesis head's kernels of (kernel size ×
    output cells it is applied to), read from the abstract module (one class per RoI for the
    class-specific logits); also with a width floor (``min_stage_channels=64``: 256, 128, 64, 64)."""
    from msvision.models.heads.refinemask.cost import refinemask_macs

    config = load_config(str(CONFIGS / "r50_fpn_fqdet_refinemask.py"))
    config.model.seg_head.min_stage_channels = floor
    head = abstract_model(config.model).seg_head
    if floor > 1:
        assert head.stage_logits[-1].kernel.shape[0] == 64  # the floor, not 32
    r, p = 7, 200 * 304
    sizes = [14, 28, 56]
    cells = [r * s * s for s in sizes]
    k = lambda layer: layer.kernel.size  # noqa: E731
    expected = k(head.query_fusion.query_proj) * r
    expected += (k(head.query_fusion.fuse.hidden) + k(head.query_fusion.fuse.out)) * cells[0]
    expected += sum(k(c) for c in head.instance_convs) * cells[0] + sum(k(c) for c in head.semantic_convs) * p
    for s, stage in enumerate(head.stages):
        expected += k(stage.semantic_in) * p
        layers = [stage.fuse_in, stage.fusion.merge, stage.fuse_out, *stage.fusion.branches]
        expected += sum(k(layer) for layer in layers) * cells[s]
        expected += k(head.stage_logits[s]) // head.stage_logits[s].num_classes * cells[s]
    expected += k(head.stage_logits[-1]) * cells[-1]
    macs = refinemask_macs(256, r, p, min_stage_channels=floor)
    layer_terms = macs["total"] - macs["roi_align"] - macs["semantic_sampling"] - macs["upsampling"]
    assert layer_terms == expected
