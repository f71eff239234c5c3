"""Optimizer parameter groups and schedules (thesis section 2.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.train import optimizer as optimizer_lib


class _Attention(nnx.Module):
    def __init__(self, rngs):
        self.sampling_offsets = nnx.Linear(4, 4, rngs=rngs)
        self.value_proj = nnx.Linear(4, 4, rngs=rngs)


class _Model(nnx.Module):
    def __init__(self, rngs):
        self.backbone = nnx.Linear(4, 4, rngs=rngs)
        self.head = _Attention(rngs)


def _config(**kw):
    cfg = optimizer_lib.default_optim_config()
    cfg.update(dict(lr=1e-1, backbone_lr=1e-2, offset_lr=1e-3, weight_decay=0.0, decay_epochs=(2,), epochs=3))
    cfg.update(kw)
    return cfg


def test_groups_get_their_learning_rates():
    model = _Model(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    tx, _ = optimizer_lib.build_optimizer(_config(), params, steps_per_epoch=10)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, opt_state, params)
    # First Adam step with a constant gradient moves every weight by exactly -lr.
    np.testing.assert_allclose(updates["backbone"]["kernel"], -1e-2, rtol=1e-4)
    np.testing.assert_allclose(updates["head"]["sampling_offsets"]["kernel"], -1e-3, rtol=1e-4)
    np.testing.assert_allclose(updates["head"]["value_proj"]["bias"], -1e-1, rtol=1e-4)


def test_schedule_drops_after_decay_epochs_and_warms_up():
    cfg = _config(decay_epochs=(9, 11), warmup_steps=0)
    schedule = optimizer_lib.learning_rate_schedule(1.0, cfg, steps_per_epoch=100)
    assert float(schedule(899)) == 1.0
    assert np.isclose(float(schedule(901)), 0.1)
    assert np.isclose(float(schedule(1101)), 0.01)
    cfg = _config(decay_epochs=(9,), warmup_steps=10, warmup_factor=0.0)
    schedule = optimizer_lib.learning_rate_schedule(1.0, cfg, steps_per_epoch=100)
    assert np.isclose(float(schedule(5)), 0.5)
    assert float(schedule(10)) == 1.0


def test_clipping_applies_before_adam():
    model = _Model(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    # A large eps makes Adam's first step depend on the gradient scale, so clipping shows.
    cfg = _config(clip_norm=0.5, eps=1.0)
    tx, _ = optimizer_lib.build_optimizer(cfg, params, steps_per_epoch=10)
    grads = jax.tree.map(lambda x: 10.0 * jnp.ones_like(x), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    n = sum(x.size for x in jax.tree.leaves(params))
    g = 0.5 / np.sqrt(n)  # every clipped gradient element
    np.testing.assert_allclose(updates["head"]["value_proj"]["bias"], -0.1 * g / (g + 1.0), rtol=1e-4)


def test_parameter_group_names():
    key = jax.tree_util
    assert optimizer_lib.parameter_group((key.DictKey("backbone"), key.DictKey("conv"))) == "backbone"
    assert (
        optimizer_lib.parameter_group((key.DictKey("head"), key.DictKey("sampling_offsets"), key.DictKey("bias")))
        == "offsets"
    )
    assert optimizer_lib.parameter_group((key.DictKey("neck"), key.DictKey("backbone_proj"))) == "default"


class _Detector(nnx.Module):
    """backbone → head; ``losses`` as the models have it."""

    def __init__(self, rngs):
        self.backbone = nnx.Linear(4, 4, rngs=rngs)
        self.head = nnx.Linear(4, 1, rngs=rngs)

    def losses(self, batch, rng=None):
        loss = jnp.mean((self.head(jnp.tanh(self.backbone(batch["x"]))) - batch["y"]) ** 2)
        return loss, {}


def _train_state(frozen_parts):
    from msvision.train.loop import make_train_step

    graphdef, params, rest = nnx.split(_Detector(nnx.Rngs(0)), nnx.Param, ...)
    tx, schedules = optimizer_lib.build_optimizer(_config(weight_decay=0.1, frozen_parts=frozen_parts), params,
                                                  steps_per_epoch=10)
    state = dict(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                 rng=jax.random.PRNGKey(0))
    batch = dict(x=jnp.arange(8.0).reshape(2, 4) / 8, y=jnp.ones((2, 1)))
    return make_train_step(graphdef, tx, schedules, frozen_parts), state, batch


def test_frozen_parts_do_not_change_and_their_backward_pass_is_not_run():
    step, state, batch = _train_state(("backbone",))
    before = jax.tree.map(np.asarray, state["params"])
    new_state, metrics = step(state, batch)
    after = jax.tree.map(np.asarray, new_state["params"])
    # weight decay 0.1 would move a trained weight: the frozen backbone is bit-identical
    jax.tree.map(np.testing.assert_array_equal, after["backbone"], before["backbone"])
    assert not np.array_equal(after["head"]["kernel"], before["head"]["kernel"])
    # Forward: 2 matrix products; backward of the head's weights: 1. Trained, the
    # backbone adds the head's input gradient and its own weight gradient: 2 more.
    def products(frozen):
        fn, st, b = _train_state(frozen)
        return str(jax.make_jaxpr(fn)(st, b)).count("dot_general")
    assert products(("backbone",)) == 3
    assert products(()) == 5
    # the frozen run's head update equals the trained run's (same loss, same head gradient)
    trained, _ = _train_state(())[0](*_train_state(())[1:])
    np.testing.assert_allclose(after["head"]["kernel"], np.asarray(trained["params"]["head"]["kernel"]), rtol=1e-6)


def test_frozen_parts_must_exist_and_change_nothing_when_there_are_none():
    params = nnx.state(_Model(nnx.Rngs(0)), nnx.Param)
    # the optimizer state of a run without frozen parts has the layout of earlier versions
    tx, _ = optimizer_lib.build_optimizer(_config(), params, steps_per_epoch=10)
    assert set(tx.init(params).inner_states) == {"backbone", "offsets", "default"}
    with pytest.raises(ValueError, match="not parts of this model"):
        optimizer_lib.build_optimizer(_config(frozen_parts=("neck",)), params, steps_per_epoch=10)
