"""The four chapter 5 mask heads name the fields they share alike, and the names change no
parameter tree: ``roi_resolution`` (the RoIAlign output size) and ``roi_convs`` (the 3×3
convolutions on the fused RoI features) build the layers that checkpoints hold under each
head's own module names (EffSeg ``fcn``, RefineMask++ ``instance_convs``, Mask R-CNN++ and
PointRend++ ``mask_head/convs``)."""

import jax
import pytest
from flax import nnx

from msvision.checkpoint import path_name
from msvision.models.abstract import abstract_init
from msvision.models.build import build_part, module_config

C = 16
LEVELS = (2, 3, 4, 5, 6, 7)
ROI_CONVS = {"effseg": "fcn", "maskrcnn": "mask_head/convs", "pointrend": "mask_head/convs",
             "refinemask": "instance_convs"}  # the convolutions' path in the parameter tree


def param_shapes(module) -> dict[str, tuple[int, ...]]:
    """``{'fcn/0/kernel': shape, ...}``: the module's parameters by checkpoint path."""
    state = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    return {path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def test_shared_fields_have_one_name():
    for name in ROI_CONVS:
        assert {"roi_resolution", "roi_convs"} <= set(module_config("seg_head", name).keys()), name
    for name in ("maskrcnn", "pointrend"):  # the weight of the 28² FCN mask loss ('loss_mask')
        assert module_config("seg_head", name).mask_loss_weight == 1.0
    for name in ("effseg", "refinemask"):  # per-stage weights of the mask loss
        assert len(module_config("seg_head", name).loss.seg_weights) == 4


@pytest.mark.parametrize("name", sorted(ROI_CONVS))
def test_roi_convs_keep_the_checkpoint_parameter_names(name):
    cfg = module_config("seg_head", name)
    cfg.roi_convs = 3
    supplied = {} if name == "effseg" else {"num_classes": 3}
    head = abstract_init(lambda: build_part("seg_head", cfg, levels=LEVELS, channels=C, rngs=nnx.Rngs(0),
                                            **supplied))
    prefix = ROI_CONVS[name] + "/"
    convs = {k: v for k, v in param_shapes(head).items() if k.startswith(prefix)}
    assert convs == {f"{prefix}{i}/{leaf}": shape for i in range(3)
                     for leaf, shape in (("kernel", (3, 3, C, C)), ("bias", (C,)))}
