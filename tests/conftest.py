"""Fixtures shared by the prediction and export tests (see ``inference_helpers.py``)."""

import os

import pytest

import inference_helpers


@pytest.fixture(scope="session")
def inference_workdir(tmp_path_factory):
    """``(config_file_arg, workdir, data_root)`` of :func:`inference_helpers.make_inference_workdir`."""
    return inference_helpers.make_inference_workdir(tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="session")
def live_predictor(inference_workdir):
    """A :class:`msvision.predict.Predictor` of the fixture work directory (score threshold 0)."""
    from msvision.predict import Predictor

    _, workdir, data_root = inference_workdir
    predictor = Predictor.from_workdir(inference_helpers.tiny_inference_config(data_root), workdir,
                                       score_threshold=0.0)
    assert not os.path.exists(data_root)  # restoring neither read nor generated the training data
    return predictor
