"""Padding-aware helpers (msvision/ops/padding.py, layers.GroupNorm) against torch run on
each image alone: resizing between valid maps, masked GroupNorm, masks."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.layers import Conv2d, GroupNorm
from msvision.ops import padding

SIZES = np.array([[13, 9], [7, 12], [1, 1]], np.int32)  # valid (h, w) of three images in a 16×16 canvas


def _canvas(seed=0, c=3):
    x = np.random.default_rng(seed).normal(size=(len(SIZES), 16, 16, c)).astype(np.float32)
    return x  # garbage everywhere, including the padding


def test_valid_sizes_and_mask():
    np.testing.assert_array_equal(padding.valid_sizes(SIZES, 4), [[4, 3], [2, 3], [1, 1]])
    m = np.asarray(padding.padding_mask(jnp.asarray(SIZES), (4, 4), 4))[..., 0]
    assert m.shape == (3, 4, 4)
    np.testing.assert_array_equal(m.sum((1, 2)), [12, 6, 1])
    assert padding.padding_mask(None, (4, 4), 4) is None
    x = jnp.ones((3, 4, 4, 2))
    np.testing.assert_array_equal(np.asarray(padding.mask_padding(x, jnp.asarray(SIZES), 4)).sum((1, 2, 3)),
                                  [24, 12, 2])


@pytest.mark.oracle
@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("out_stride,in_stride", [(1, 2), (2, 1)])
def test_resize_between_strides_matches_torch_per_image(method, out_stride, in_stride):
    """Each image's valid map at one stride is resized onto its valid map at the other,
    exactly as F.interpolate(size=...) on the image alone; cells outside are ignored."""
    import torch
    import torch.nn.functional as F

    sizes = jnp.asarray(SIZES)
    src_hw = (-(-16 // in_stride),) * 2
    dst_hw = (-(-16 // out_stride),) * 2
    x = _canvas()[:, : src_hw[0], : src_hw[1]]
    out = np.asarray(padding.resize_between_strides(jnp.asarray(x), dst_hw, sizes, in_stride, out_stride, method))
    for b, (h, w) in enumerate(SIZES):
        hi, wi = -(-h // in_stride), -(-w // in_stride)
        ho, wo = -(-h // out_stride), -(-w // out_stride)
        alone = torch.from_numpy(np.ascontiguousarray(x[b : b + 1, :hi, :wi])).permute(0, 3, 1, 2)
        kw = dict(align_corners=False) if method == "bilinear" else {}
        ref = F.interpolate(alone, size=(ho, wo), mode=method, **kw).permute(0, 2, 3, 1).numpy()[0]
        np.testing.assert_allclose(out[b, :ho, :wo], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
@pytest.mark.parametrize("src,dst", [((4, 4), (8, 8)), ((13, 7), (25, 13)), ((1, 2), (2, 3)),
                                     ((7, 10), (13, 19)), ((6, 6), (4, 5))])
def test_resize_bilinear_without_sizes_matches_torch(src, dst):
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
    ours = np.asarray(padding.resize_bilinear(jnp.asarray(x), dst))
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=dst, mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.oracle
def test_masked_group_norm_matches_torch_on_each_image_alone():
    import torch
    import torch.nn.functional as F

    c = 8
    gn = GroupNorm(c, 4, rngs=nnx.Rngs(0))
    gn.scale[...] = jnp.linspace(0.5, 1.5, c)
    gn.bias[...] = jnp.linspace(-1, 1, c)
    x = _canvas(1, c) * 3 + 1
    mask = padding.padding_mask(jnp.asarray(SIZES), (16, 16), 1)
    out = np.asarray(gn(jnp.asarray(x), mask))
    for b, (h, w) in enumerate(SIZES[:2]):  # torch refuses one value per group (the 1×1 image)
        alone = torch.from_numpy(np.ascontiguousarray(x[b : b + 1, :h, :w])).permute(0, 3, 1, 2).double()
        ref = F.group_norm(alone, 4, torch.from_numpy(np.asarray(gn.scale[...], np.float64)),
                           torch.from_numpy(np.asarray(gn.bias[...], np.float64)), eps=1e-5)
        np.testing.assert_allclose(out[b, :h, :w], ref.permute(0, 2, 3, 1).numpy()[0], rtol=1e-5, atol=1e-5)
    # the 1×1 image: one cell and two channels per group: (x - mean) / std of two values
    one = x[2, 0, 0].reshape(4, 2)
    expected = (one - one.mean(1, keepdims=True)) / np.sqrt(one.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out[2, 0, 0], expected.reshape(-1) * np.asarray(gn.scale[...]) + np.asarray(
        gn.bias[...]), rtol=1e-4, atol=1e-5)
    # without a mask: statistics over the whole map, as nnx.GroupNorm
    ref_nnx = nnx.GroupNorm(c, num_groups=4, epsilon=1e-5, rngs=nnx.Rngs(0))
    ref_nnx.scale[...], ref_nnx.bias[...] = gn.scale[...], gn.bias[...]
    np.testing.assert_allclose(np.asarray(gn(jnp.asarray(x))), np.asarray(ref_nnx(jnp.asarray(x))), rtol=1e-4,
                               atol=1e-4)


def test_conv_sees_zeros_outside_the_mask():
    conv = Conv2d(3, 4, 3, rngs=nnx.Rngs(0))
    x = _canvas(2)
    mask = padding.padding_mask(jnp.asarray(SIZES), (16, 16), 1)
    zeroed = np.where(np.asarray(mask), x, 0.0)
    np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x), mask)), np.asarray(conv(jnp.asarray(zeroed))),
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(np.asarray(conv(jnp.asarray(x))), np.asarray(conv(jnp.asarray(zeroed))))
