"""MultiScaleDeformableAttention module: shapes, Deformable DETR init, reference frames."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.attention import MultiScaleDeformableAttention
from msvision.ops.msda import multiscale_deformable_attention_reference

SHAPES = ((6, 8), (3, 4))
TOTAL = sum(h * w for h, w in SHAPES)


def build(mode, points=2, heads=4, dim=16, **kwargs):
    return MultiScaleDeformableAttention(dim, heads, len(SHAPES), points, reference_mode=mode,
                                         rngs=nnx.Rngs(0), **kwargs)


def random_inputs(seed=0, batch=2, queries=5, dim=16):
    rng = np.random.default_rng(seed)
    query = jnp.asarray(rng.standard_normal((batch, queries, dim)), jnp.float32)
    value_input = jnp.asarray(rng.standard_normal((batch, TOTAL, dim)), jnp.float32)
    boxes = jnp.asarray(np.concatenate([rng.uniform(0.3, 0.7, (batch, queries, 2)),
                                        rng.uniform(0.1, 0.4, (batch, queries, 2))], -1), jnp.float32)
    return query, value_input, boxes


def test_output_shape_and_parameter_paths():
    module = build("points")
    query, value_input, boxes = random_inputs()
    out = module(query, value_input, SHAPES, boxes[..., :2])
    assert out.shape == query.shape
    paths = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))}
    # The optimizer's MSDA learning-rate group matches on this name (thesis section 2.4).
    assert {"sampling_offsets/kernel", "sampling_offsets/bias"} <= paths
    assert {"attention_weights/kernel", "value_proj/kernel", "output_proj/kernel"} <= paths


def test_init_follows_deformable_detr():
    module = build("points", points=3, heads=8)
    np.testing.assert_array_equal(module.sampling_offsets.kernel.value, 0.0)
    np.testing.assert_array_equal(module.attention_weights.kernel.value, 0.0)
    np.testing.assert_array_equal(module.attention_weights.bias.value, 0.0)
    np.testing.assert_array_equal(module.value_proj.bias.value, 0.0)
    np.testing.assert_array_equal(module.output_proj.bias.value, 0.0)
    bias = np.asarray(module.sampling_offsets.bias.value).reshape(8, len(SHAPES), 3, 2)
    # Head 0 points right, head 2 down (+y), head 1 diagonally onto the square corner;
    # point p is p+1 times further; identical on every level.
    np.testing.assert_allclose(bias[0, 0], [[1, 0], [2, 0], [3, 0]], atol=1e-6)
    np.testing.assert_allclose(bias[2, 1], [[0, 1], [0, 2], [0, 3]], atol=1e-6)
    np.testing.assert_allclose(bias[1, 0, 0], [1, 1], atol=1e-6)
    np.testing.assert_allclose(np.max(np.abs(bias[:, :, 0]), axis=-1), 1.0, rtol=1e-6)
    # xavier-uniform: bound sqrt(6 / (fan_in + fan_out)).
    assert np.max(np.abs(module.value_proj.kernel.value)) <= np.sqrt(6 / 32) + 1e-6


def test_attention_weights_are_uniform_at_init():
    module = build("boxes", points=2)
    query, _, boxes = random_inputs(1)
    _, weights = module.sampling_locations_and_weights(query, boxes, SHAPES)
    np.testing.assert_allclose(weights, 1.0 / (len(SHAPES) * 2), rtol=1e-6)


def test_box_mode_init_points_lie_on_box_border():
    """FQDet / the author's ``MSDAv1`` (DetSeg ``models/modules/attention.py``): loc = (cx, cy)
    + offset * 0.5 * (w, h) / P, so at init the outermost point of every head is on the box
    border and point p at p/P of the way."""
    points = 4
    module = build("boxes", points=points, heads=8)
    query, _, boxes = random_inputs(2)
    locations, _ = module.sampling_locations_and_weights(query, boxes, SHAPES)
    centre = np.asarray(boxes)[:, :, None, None, None, :2]
    half = np.asarray(boxes)[:, :, None, None, None, 2:] / 2
    normalised = (np.asarray(locations) - centre) / half  # box frame: unit = half size
    chebyshev = np.max(np.abs(normalised), axis=-1)  # [B, Q, M, L, P]
    np.testing.assert_allclose(chebyshev[..., -1], 1.0, rtol=1e-5)
    np.testing.assert_allclose(chebyshev, np.broadcast_to(np.arange(1, points + 1) / points, chebyshev.shape),
                               rtol=1e-5)


def test_point_and_box_frames_match_hand_computation():
    """A hand-set offset bias; zero kernel, so offsets are the bias for every query."""
    offset = np.zeros((1, len(SHAPES), 1, 2), np.float32)  # one head, one point
    offset[0, 0, 0] = [2.0, -1.0]
    offset[0, 1, 0] = [0.5, 1.5]
    reference_box = np.array([0.4, 0.6, 0.2, 0.3], np.float32)
    query = jnp.zeros((1, 1, 4))

    points_module = MultiScaleDeformableAttention(4, 1, len(SHAPES), 1, reference_mode="points", rngs=nnx.Rngs(0))
    points_module.sampling_offsets.bias.value = jnp.asarray(offset.reshape(-1))
    locations, _ = points_module.sampling_locations_and_weights(query, jnp.asarray(reference_box[None, None, :2]),
                                                                SHAPES)
    # Deformable DETR: an offset of one moves one pixel of that level (W, H) = (8, 6), (4, 3).
    expected_points = [[0.4 + 2.0 / 8, 0.6 - 1.0 / 6], [0.4 + 0.5 / 4, 0.6 + 1.5 / 3]]
    np.testing.assert_allclose(np.asarray(locations)[0, 0, 0, :, 0], expected_points, rtol=1e-6)

    boxes_module = MultiScaleDeformableAttention(4, 1, len(SHAPES), 1, reference_mode="boxes", rngs=nnx.Rngs(0))
    boxes_module.sampling_offsets.bias.value = jnp.asarray(offset.reshape(-1))
    locations, _ = boxes_module.sampling_locations_and_weights(query, jnp.asarray(reference_box[None, None]), SHAPES)
    # Box frame with P = 1: centre + offset * (w / 2, h / 2), the same on every level.
    expected_boxes = [[0.4 + 2.0 * 0.1, 0.6 - 1.0 * 0.15], [0.4 + 0.5 * 0.1, 0.6 + 1.5 * 0.15]]
    np.testing.assert_allclose(np.asarray(locations)[0, 0, 0, :, 0], expected_boxes, rtol=1e-6)


def test_forward_matches_reference_composition():
    """Module = output_proj(MSDA(value_proj(x) split in heads, locations, softmax))."""
    module = build("points")
    query, value_input, boxes = random_inputs(3)
    module.attention_weights.kernel.value = 0.1 * jax.random.normal(jax.random.key(1),
                                                                    module.attention_weights.kernel.value.shape)
    reference = boxes[..., :2]
    out = module(query, value_input, SHAPES, reference)
    value = (value_input @ module.value_proj.kernel.value + module.value_proj.bias.value).reshape(2, TOTAL, 4, 4)
    locations, weights = module.sampling_locations_and_weights(query, reference, SHAPES)
    assert not np.allclose(weights, weights[..., :1, :1])  # weights are no longer uniform
    sampled = multiscale_deformable_attention_reference(value, SHAPES, locations, weights)
    expected = sampled @ module.output_proj.kernel.value + module.output_proj.bias.value
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_value_padding_mask_zeroes_padded_values():
    module = build("points")
    query, value_input, boxes = random_inputs(4)
    mask = np.zeros((2, TOTAL), bool)
    mask[:, 30:40] = True  # some padded positions of level 0
    perturbed = value_input.at[:, 30:40].add(100.0)
    out_a = module(query, value_input, SHAPES, boxes[..., :2], jnp.asarray(mask))
    out_b = module(query, perturbed, SHAPES, boxes[..., :2], jnp.asarray(mask))
    np.testing.assert_allclose(out_a, out_b, rtol=1e-5, atol=1e-5)
    out_unmasked = module(query, perturbed, SHAPES, boxes[..., :2])
    assert not np.allclose(out_a, out_unmasked)


def test_bfloat16_compute_dtype_and_per_level_reference_boxes():
    module = build("boxes", dtype=jnp.bfloat16)
    query, value_input, boxes = random_inputs(5)
    per_level = jnp.repeat(boxes[:, :, None], len(SHAPES), axis=2)  # [B, Q, L, 4]
    out = module(query, value_input, SHAPES, per_level)
    assert out.dtype == jnp.bfloat16
    reference_out = build("boxes")(query, value_input, SHAPES, boxes)
    np.testing.assert_allclose(np.asarray(out, np.float32), reference_out, atol=0.05)


def test_rejects_wrong_number_of_levels():
    with pytest.raises(ValueError, match="levels"):
        build("points")(*random_inputs()[:2], SHAPES[:1], random_inputs()[2][..., :2])
