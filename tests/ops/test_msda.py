"""XLA multi-scale deformable attention: torch oracle, VJP, bf16 accumulation."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.test_util import check_grads

from msvision.ops.msda import (
    multiscale_deformable_attention,
    multiscale_deformable_attention_reference,
)


def make_inputs(seed, batch, queries, heads, channels, spatial_shapes, points, low=-0.15, high=1.15,
                dtype=np.float32):
    """Random value / locations / weights; locations spill outside [0, 1]."""
    rng = np.random.default_rng(seed)
    levels = len(spatial_shapes)
    total = sum(h * w for h, w in spatial_shapes)
    value = rng.standard_normal((batch, total, heads, channels)).astype(dtype)
    locations = rng.uniform(low, high, (batch, queries, heads, levels, points, 2)).astype(dtype)
    weights = rng.random((batch, queries, heads, levels, points)).astype(dtype)
    return value, locations, weights


def put_on_pixel_borders(locations, spatial_shapes, seed):
    """Move a third of the points exactly onto pixel edges k / W (k in [-1, W + 1])
    and a third onto pixel centres (k + 0.5) / W, per level, per axis."""
    rng = np.random.default_rng(seed)
    locations = locations.copy()
    for level, (height, width) in enumerate(spatial_shapes):
        sl = locations[:, :, :, level]
        for axis, size in ((0, width), (1, height)):
            k = rng.integers(-1, size + 2, sl.shape[:-1])
            choice = rng.integers(0, 3, sl.shape[:-1])
            sl[..., axis] = np.where(choice == 0, k / size, np.where(choice == 1, (k + 0.5) / size, sl[..., axis]))
    return locations


CASES = [
    # (batch, queries, heads, channels, spatial_shapes, points)
    (2, 7, 3, 5, ((6, 9), (3, 5), (2, 2)), 2),
    (1, 13, 2, 8, ((8, 8), (4, 4), (2, 2), (1, 1)), 4),
    (2, 4, 1, 3, ((5, 3),), 1),
]


# Non-oracle checks run the first case by default and the others with -m slow.
SLOW_AFTER_FIRST = [0] + [pytest.param(i, marks=pytest.mark.slow) for i in range(1, len(CASES))]


# ----------------------------------------------------------------------------- torch oracle


def torch_ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights):
    """Deformable DETR's ``ms_deform_attn_core_pytorch`` (models/ops/functions)."""
    import torch
    import torch.nn.functional as F

    n, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(n * heads, channels, h, w)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampling_value_list.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    attention_weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1)
    return output.view(n, heads * channels, queries).transpose(1, 2).contiguous()


def torch_forward_and_grads(value, spatial_shapes, locations, weights, output_grad):
    """float64 torch output and gradients w.r.t. (value, locations, weights)."""
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in (value, locations, weights)]
    output = torch_ms_deform_attn_core(tensors[0], spatial_shapes, tensors[1], tensors[2])
    output.backward(torch.tensor(np.asarray(output_grad, np.float64)))
    return output.detach().numpy(), [t.grad.numpy() for t in tensors]


def relative_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / (np.max(np.abs(expected)) + 1e-12))


@pytest.mark.oracle
@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_matches_torch_grid_sample_reference(case):
    pytest.importorskip("torch")
    batch, queries, heads, channels, shapes, points = CASES[case]
    value, locations, weights = make_inputs(case, batch, queries, heads, channels, shapes, points)
    locations = put_on_pixel_borders(locations, shapes, seed=case)
    output_grad = np.zeros((batch, queries, heads * channels))
    expected, _ = torch_forward_and_grads(value, shapes, locations, weights, output_grad)
    actual = multiscale_deformable_attention(value, shapes, locations, weights, impl="xla")
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < 1e-5


@pytest.mark.oracle
@pytest.mark.parametrize("case", range(len(CASES)))
def test_gradients_match_torch_autograd(case):
    pytest.importorskip("torch")
    batch, queries, heads, channels, shapes, points = CASES[case]
    value, locations, weights = make_inputs(10 + case, batch, queries, heads, channels, shapes, points)
    if all(h & (h - 1) == 0 and w & (w - 1) == 0 for h, w in shapes):
        # Power-of-two maps: k / W is exact in both torch's (2x - 1) grid and our x * W,
        # so both take the same one-sided derivative on the borders.
        locations = put_on_pixel_borders(locations, shapes, seed=case)
    output_grad = np.random.default_rng(case).standard_normal((batch, queries, heads * channels))
    _, expected_grads = torch_forward_and_grads(value, shapes, locations, weights, output_grad)

    def loss(v, l, w):
        out = multiscale_deformable_attention(v, shapes, l, w, impl="xla")
        return jnp.sum(out * output_grad.astype(np.float32))

    grads = jax.grad(loss, argnums=(0, 1, 2))(value, locations, weights)
    for name, actual, expected in zip(("value", "locations", "weights"), grads, expected_grads):
        assert actual.shape == expected.shape, name
        assert relative_error(actual, expected) < 2e-5, name


# ----------------------------------------------------------------------------- VJP


@pytest.mark.parametrize("case", SLOW_AFTER_FIRST)
def test_forward_matches_jnp_reference(case):
    batch, queries, heads, channels, shapes, points = CASES[case]
    value, locations, weights = make_inputs(20 + case, batch, queries, heads, channels, shapes, points)
    actual = multiscale_deformable_attention(value, shapes, locations, weights, impl="xla")
    expected = multiscale_deformable_attention_reference(value, shapes, locations, weights)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", SLOW_AFTER_FIRST)
def test_custom_vjp_matches_autodiff_of_reference(case):
    batch, queries, heads, channels, shapes, points = CASES[case]
    value, locations, weights = make_inputs(30 + case, batch, queries, heads, channels, shapes, points)
    output_grad = np.random.default_rng(case).standard_normal((batch, queries, heads * channels)).astype(np.float32)

    def loss(op):
        return lambda v, l, w: jnp.sum(op(v, shapes, l, w) * output_grad)

    xla_op = lambda v, s, l, w: multiscale_deformable_attention(v, s, l, w, impl="xla")
    actual = jax.jit(jax.grad(loss(xla_op), argnums=(0, 1, 2)))(value, locations, weights)
    expected = jax.grad(loss(multiscale_deformable_attention_reference), argnums=(0, 1, 2))(
        value, locations, weights)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(e))))


def test_check_grads_numerically():
    """Finite differences in float64, points away from pixel borders (where the
    bilinear map is not differentiable)."""
    shapes = ((5, 4), (3, 2))
    with jax.enable_x64(True):
        value, locations, weights = make_inputs(3, 1, 3, 2, 3, shapes, 2, dtype=np.float64)
        # Snap every point to a pixel-interior offset of 0.3 so +-eps stays in the cell.
        for level, (h, w) in enumerate(shapes):
            size = np.array([w, h], np.float64)
            cell = np.floor(locations[:, :, :, level] * size - 0.5)
            locations[:, :, :, level] = (cell + 0.5 + 0.3) / size
        op = lambda v, l, w: multiscale_deformable_attention(v, shapes, l, w, impl="xla")
        check_grads(op, (value, locations, weights), order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- bf16


def test_bfloat16_inputs_accumulate_in_float32():
    """With bf16 inputs the only errors are the bf16 rounding of inputs and output.

    Against the float32 reference on the *same* (bf16-rounded) inputs, the bf16
    output may differ by at most the final rounding (half an ulp, <= 2^-8 relative)
    plus float32 summation noise; a bf16 accumulation over L * P * 4 = 32 terms
    would round at every step.
    """
    shapes = ((16, 16), (4, 4))
    value, locations, weights = make_inputs(5, 1, 32, 2, 8, shapes, 4)
    weights = weights / weights.sum(axis=(-1, -2), keepdims=True)
    value_bf16, locations_bf16, weights_bf16 = (jnp.asarray(x, jnp.bfloat16) for x in (value, locations, weights))
    output_bf16 = multiscale_deformable_attention(value_bf16, shapes, locations_bf16, weights_bf16, impl="xla")
    assert output_bf16.dtype == jnp.bfloat16
    expected = multiscale_deformable_attention_reference(
        *(x.astype(jnp.float32) for x in (value_bf16,)), shapes, locations_bf16.astype(jnp.float32),
        weights_bf16.astype(jnp.float32))
    expected = np.asarray(expected, np.float64)
    error = np.abs(np.asarray(output_bf16, np.float64) - expected)
    assert np.all(error <= 2.0**-8 * np.abs(expected) + 1e-6)

    # Against the exact float32 inputs the error is what bf16 input rounding explains:
    # locations near 1 move by up to 2^-9 * 16 px = 0.03 px on the 16-wide level
    # (a few % of a unit-variance bilinear field), value and weights by 2^-9.
    exact = np.asarray(multiscale_deformable_attention_reference(value, shapes, locations, weights))
    assert relative_error(output_bf16, exact) < 0.1


def test_bfloat16_gradients_close_to_float32():
    shapes = ((8, 8),)
    value, locations, weights = make_inputs(6, 1, 8, 2, 8, shapes, 2, low=0.05, high=0.95)
    cast = lambda dtype: [jnp.asarray(x, dtype) for x in (value, locations, weights)]
    grad = jax.grad(lambda v, l, w: jnp.sum(multiscale_deformable_attention(v, shapes, l, w, impl="xla")
                                            .astype(jnp.float32)), argnums=(0, 1, 2))
    grads_bf16 = grad(*cast(jnp.bfloat16))
    grads_f32 = grad(*[x.astype(jnp.float32) for x in cast(jnp.bfloat16)])
    for g16, g32 in zip(grads_bf16, grads_f32):
        assert g16.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(g16, np.float32), g32, rtol=2.0**-8, atol=1e-6)


def test_rejects_inconsistent_shapes():
    shapes = ((4, 4), (2, 2))
    value, locations, weights = make_inputs(0, 1, 2, 2, 4, shapes, 1)
    with pytest.raises(ValueError, match="positions"):
        multiscale_deformable_attention(value, ((4, 4), (2, 3)), locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        multiscale_deformable_attention(value, shapes, locations, weights[..., :1, :])
