"""``train.init_from``: a fresh run takes some model parts from another run's checkpoint."""

import jax
import numpy as np
import pytest

from inference_helpers import TINY_EFFSEG_CONFIG, make_inference_workdir, random_model_state, tiny_inference_config
from msvision.train.loop import NoCheckpointError, initialize_from


def test_parts_come_from_the_checkpoint_and_the_rest_stays(tmp_path):
    """A detector's parts (backbone, neck, head) are read from the source's latest checkpoint;
    the segmentation head keeps this run's initialisation."""
    config_arg, source, data_root = make_inference_workdir(tmp_path, TINY_EFFSEG_CONFIG, (), seed=0)
    config = tiny_inference_config(data_root, TINY_EFFSEG_CONFIG, ())
    saved = random_model_state(config, 6, seed=0)[1]  # what make_inference_workdir saved
    fresh = jax.device_put(random_model_state(config, 6, seed=1)[1])
    fresh_seg = jax.tree.map(np.asarray, fresh["seg_head"])
    state = initialize_from(dict(params=fresh, step=0), source, ("backbone", "neck", "head"))
    for part in ("backbone", "neck", "head"):
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state["params"][part]), saved[part])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state["params"]["seg_head"]), fresh_seg)
    differs = jax.tree.map(lambda a, b: not np.array_equal(a, b), fresh_seg, saved["seg_head"])
    assert any(jax.tree.leaves(differs))  # the source's seg head was not read
    assert state["step"] == 0


def test_clear_errors(tmp_path):
    config_arg, source, data_root = make_inference_workdir(tmp_path, TINY_EFFSEG_CONFIG, (), seed=0)
    config = tiny_inference_config(data_root, TINY_EFFSEG_CONFIG, ())
    params = jax.device_put(random_model_state(config, 6, seed=1)[1])
    with pytest.raises(ValueError, match="not parts of this model"):
        initialize_from(dict(params=params), source, ("backbone", "decoder"))
    with pytest.raises(NoCheckpointError, match="no checkpoint"):
        initialize_from(dict(params=params), str(tmp_path / "nowhere"), ("backbone",))


def test_parameters_of_another_shape_keep_their_initialisation(tmp_path, caplog):
    """A detector trained on 6 classes initialises one with 10: every parameter but the
    class-specific ones comes from the checkpoint, those keep this run's values (logged)."""
    _, source, data_root = make_inference_workdir(tmp_path, TINY_EFFSEG_CONFIG, (), seed=0)
    config = tiny_inference_config(data_root, TINY_EFFSEG_CONFIG, ())
    saved = random_model_state(config, 6, seed=0)[1]
    fresh = jax.device_put(random_model_state(config, 10, seed=1)[1])
    before = jax.tree.map(np.asarray, fresh["head"])
    with caplog.at_level("WARNING"):
        state = initialize_from(dict(params=fresh), source, ("head",))
    head = jax.tree.map(np.asarray, state["params"]["head"])
    from_checkpoint = kept = 0
    for (path, mine), saved_leaf, init in zip(jax.tree_util.tree_flatten_with_path(head)[0],
                                              jax.tree.leaves(saved["head"]), jax.tree.leaves(before)):
        if mine.shape == saved_leaf.shape:
            np.testing.assert_array_equal(mine, saved_leaf)
            from_checkpoint += 1
        else:
            np.testing.assert_array_equal(mine, init)
            kept += 1
    assert kept >= 2 and from_checkpoint > 10 * kept
    assert f"{kept} parameters keep their initialisation" in caplog.text
