"""Every head registered in build.py declares its capabilities (models/interfaces.py), and the
declarations match what the head implements."""

import inspect

import pytest

from msvision.config_schema import ConfigError
from msvision.models import build
from msvision.models.interfaces import QueryDetectionHead, SegmentationHead

HEADS = sorted(build.HEADS)
SEG_HEADS = sorted(name for name, (cls, _) in build.SEG_HEADS.items() if cls is not None)


def protocol_methods(protocol) -> set[str]:
    return {name for name, value in vars(protocol).items() if inspect.isfunction(value) and not name.startswith("_")}


@pytest.mark.parametrize("name", HEADS)
def test_every_detection_head_declares_whether_it_provides_queries(name):
    cls = build.HEADS[name][0]
    assert isinstance(cls.provides_queries, bool)
    for method in ("losses", "predict"):
        assert callable(getattr(cls, method))
    for method in protocol_methods(QueryDetectionHead):
        assert callable(getattr(cls, method, None)) == cls.provides_queries, method


@pytest.mark.parametrize("name", SEG_HEADS)
def test_every_segmentation_head_declares_whether_it_is_class_specific(name):
    cls = build.SEG_HEADS[name][0]
    assert isinstance(cls.class_specific, bool)
    # The builder passes num_classes exactly to the class-specific heads.
    assert ("num_classes" in inspect.signature(cls.__init__).parameters) == cls.class_specific
    assert build.module_schema("seg_head", name).keys().isdisjoint({"num_classes"})
    # The protocol's arity, and one losses signature for all: the detector passes rng to every head.
    for method in protocol_methods(SegmentationHead):
        expected = inspect.signature(getattr(SegmentationHead, method)).parameters
        assert len(inspect.signature(getattr(cls, method)).parameters) == len(expected), method
    rng = inspect.signature(cls.losses).parameters["rng"]
    assert rng.default is None and list(inspect.signature(cls.losses).parameters)[-1] == "rng"


def test_a_segmentation_head_on_a_head_without_queries_fails_before_anything_is_built():
    cfg = build.resolve_model_config(build.default_model_config())
    cfg.seg_head = build.module_config("seg_head", "effseg")
    with pytest.raises(ConfigError, match=r"model.seg_head 'effseg' needs a query-based detection head"):
        build.build_model(cfg, rngs=None)
