"""TPN(L, B), bFPN and hFPN necks (thesis chapter 3): shapes, structure, gradients,
the zero-mean top-down residual, and torch oracles for the bilinear upsampling and a
whole TPN layer (layer order of the author's code, DetSeg
``configs/gc/tpn_37_eeec_3b2_gn_v3.yaml``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.build import build_part
from msvision.models.layers import GroupNorm
from msvision.models.necks.bfpn import BottleneckFPN
from msvision.models.layers import Bottleneck
from msvision.models.necks.tpn import TPN, BottomUp, TopDown, TPNLayer
from msvision.models.abstract import abstract_init

D, HID = 32, 16  # tiny widths; GroupNorm(8) still has 4 / 2 channels per group


def _features(in_channels, size, batch=2, seed=0):
    """Backbone-like features for an image of ``size``: level l has ceil(H / 2^l) rows."""
    h, w = size
    keys = jax.random.split(jax.random.key(seed), len(in_channels))
    feats = {}
    for key, (level, c) in zip(keys, sorted(in_channels.items())):
        shape = (batch, -(-h // 2**level), -(-w // 2**level), c)
        feats[level] = jax.random.normal(key, shape)
    return feats


def _jit_apply(model):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, feats: nnx.merge(graphdef, state)(feats)), state


def _count(model, cls):
    return sum(1 for _, m in nnx.iter_modules(model) if isinstance(m, cls))


IN_P3 = {3: 16, 4: 24, 5: 40}
IN_P2 = {2: 8, 3: 16, 4: 24, 5: 40}


@pytest.mark.parametrize(
    "in_channels,out_levels,size",
    [
        (IN_P3, (3, 4, 5, 6, 7), (203, 145)),  # odd sizes: ceil at every halving
        (IN_P2, (2, 3, 4, 5, 6, 7), (101, 77)),
    ],
)
def test_tpn_output_shapes(in_channels, out_levels, size):
    model = TPN(in_channels, out_levels=out_levels, num_layers=1, num_bottlenecks=1, channels=D,
                hidden_channels=HID, rngs=nnx.Rngs(0))
    assert model.in_levels == tuple(sorted(in_channels)) and model.out_levels == out_levels
    apply, state = _jit_apply(model)
    out = apply(state, _features(in_channels, size))
    h, w = size
    for level in out_levels:
        hl, wl = h, w
        for _ in range(level):
            hl, wl = -(-hl // 2), -(-wl // 2)
        assert out[level].shape == (2, hl, wl, D), level
        assert bool(jnp.all(jnp.isfinite(out[level])))
    assert sorted(out) == list(out_levels)


# The full table 3.1 configurations are counted in test_table31_params.py.
@pytest.mark.parametrize("L,B,out_levels", [(1, 3, (3, 4, 5, 6, 7)), (3, 1, (3, 4, 5, 6, 7)),
                                            (2, 1, (2, 3, 4, 5, 6, 7))])
def test_tpn_operation_counts(L, B, out_levels):
    """Per layer: n−1 top-down, n−1 bottom-up, 2·B·n bottlenecks (thesis fig. 3.2)."""
    in_channels = IN_P2 if 2 in out_levels else IN_P3
    model = abstract_init(lambda: TPN(in_channels, out_levels=out_levels, num_layers=L, num_bottlenecks=B,
                                       channels=D, hidden_channels=HID, rngs=nnx.Rngs(0)))
    n = len(out_levels)
    assert _count(model, TPNLayer) == L
    assert _count(model, TopDown) == L * (n - 1)
    assert _count(model, BottomUp) == L * (n - 1)
    assert _count(model, Bottleneck) == 2 * L * B * n


def test_bfpn_hfpn_operation_counts_and_order():
    for first in (True, False):
        model = abstract_init(lambda: BottleneckFPN(IN_P3, bottlenecks_first=first, num_layers=2,
                                                     num_bottlenecks=2, channels=D, hidden_channels=HID,
                                                     rngs=nnx.Rngs(0)))
        assert _count(model, Bottleneck) == 2 * 2 * 5 and _count(model, TopDown) == 4
        assert _count(model, BottomUp) == 0
    # bFPN = bottlenecks then top-down; hFPN = top-down then bottlenecks: the coarsest
    # map is untouched by the top-down pass, so both give the same P5, but P3 differs.
    kw = dict(num_layers=1, num_bottlenecks=1, channels=D, hidden_channels=HID, out_levels=(3, 4, 5))
    b = BottleneckFPN(IN_P3, bottlenecks_first=True, rngs=nnx.Rngs(1), **kw)
    h = BottleneckFPN(IN_P3, bottlenecks_first=False, rngs=nnx.Rngs(1), **kw)
    feats = _features(IN_P3, (64, 64))
    ob, oh = b(feats), h(feats)
    np.testing.assert_allclose(ob[5], oh[5], rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(ob[3] - oh[3]))) > 1e-3


@pytest.mark.parametrize("name,target,in_channels", [("tpn", 7, IN_P2), ("bfpn", 3, IN_P3), ("hfpn", 3, IN_P3)])
def test_gradients_reach_every_input_level(name, target, in_channels):
    """TPN: the coarsest output P7 depends on every input (C2 through the bottom-up
    pass). bFPN/hFPN have no bottom-up pass: the finest output depends on every
    input through the top-down pass."""
    in_levels = tuple(sorted(in_channels))
    cfg = dict(name=name, num_layers=1, num_bottlenecks=1, channels=D, hidden_channels=HID,
               out_levels=in_levels + (6, 7))
    model = build_part("neck", cfg, in_channels=in_channels, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    feats = _features(in_channels, (64, 80))
    weights = jax.random.normal(jax.random.key(10), (1, 1, 1, D))

    @jax.jit
    def loss(feats):
        return jnp.sum(nnx.merge(graphdef, state)(feats)[target] * weights)

    grads = jax.grad(loss)(feats)
    for level, g in grads.items():
        assert float(jnp.linalg.norm(g)) > 0, f"no gradient from P{target} reaches C{level}"


def test_top_down_residual_zero_mean_at_init():
    """Thesis 3.3.3: the linear projection "makes the expectation of the residual
    features zero at initialization". The expectation is over the random init of the
    projection (for a fixed init and varying inputs the residual's mean is W·E[h] + b,
    generally non-zero). We sample S inits × D output channels of the residual at a
    fixed input: their mean must be 0 within 4 standard errors (std/sqrt(S·D)), while
    the projection's input ReLU(GN(P_{l+1})) has mean ≈ E[ReLU(N(0, 1))] = 0.40 — the
    residual without the projection would be far from zero-mean."""
    channels, seeds = 64, 48
    coarse = jax.random.normal(jax.random.key(0), (2, 6, 6, channels)) * 3.0 + 1.0

    def residual_means(seed):
        op = TopDown(channels, rngs=nnx.Rngs(seed))
        r = op(jnp.zeros((2, 12, 12, channels)), coarse)  # the residual added to a zero P_l
        return jnp.mean(r, axis=(0, 1, 2))  # [D] per-channel spatial mean

    means = np.concatenate([np.asarray(residual_means(s)) for s in range(seeds)])  # [S·D]
    stderr = means.std() / np.sqrt(means.size)
    assert abs(means.mean()) < 4 * stderr, (means.mean(), stderr)
    op = TopDown(channels, rngs=nnx.Rngs(0))
    pre_projection = jax.nn.relu(op.proj.norm(coarse))
    assert float(pre_projection.mean()) > 0.3


def _torch_tpn_layer(layer, maps):
    """Torch transcription of one TPN layer (the author's code) with ``layer``'s weights."""
    import torch
    import torch.nn.functional as F

    def t(a):
        return torch.from_numpy(np.array(a, np.float64))  # a float64 oracle: build-independent

    def preact(mod, x):
        x = F.relu(F.group_norm(x, 8, t(mod.norm.scale[...]), t(mod.norm.bias[...]), eps=1e-5))
        k = t(mod.conv.kernel[...]).permute(3, 2, 0, 1)
        return F.conv2d(x, k, t(mod.conv.bias[...]), stride=mod.conv.stride, padding=mod.conv.padding)

    def branch(b, x):
        return preact(b.expand, preact(b.process, preact(b.reduce, x)))

    def self_proc(sp, x):
        for bn in sp.bottlenecks:
            x = x + branch(bn.branch, x)
        return x

    xs = [t(m).permute(0, 3, 1, 2) for m in maps]
    n = len(xs)
    for i in reversed(range(n - 1)):  # top-down: project at coarse resolution, then upsample
        delta = preact(layer.top_down[i].proj, xs[i + 1])
        xs[i] = xs[i] + F.interpolate(delta, size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
    xs = [self_proc(sp, x) for sp, x in zip(layer.self_processing_1, xs)]
    for i in range(n - 1):  # bottom-up
        xs[i + 1] = xs[i + 1] + branch(layer.bottom_up[i].branch, xs[i])
    xs = [self_proc(sp, x) for sp, x in zip(layer.self_processing_2, xs)]
    return [x.permute(0, 2, 3, 1).numpy() for x in xs]


@pytest.mark.oracle
def test_tpn_layer_matches_torch_transcription():
    layer = TPNLayer(5, 2, D, HID, rngs=nnx.Rngs(3))
    # randomise GroupNorm affine so scale/shift mistakes are visible
    norms = [m for _, m in nnx.iter_modules(layer) if isinstance(m, GroupNorm)]
    for i, norm in enumerate(norms):
        k1, k2 = jax.random.split(jax.random.key(100 + i))
        norm.scale[...] = 1.0 + 0.3 * jax.random.normal(k1, norm.scale.shape)
        norm.bias[...] = 0.3 * jax.random.normal(k2, norm.bias.shape)
    sizes = [(13, 10), (7, 5), (4, 3), (2, 2), (1, 1)]
    maps = [jax.random.normal(jax.random.key(i), (2, h, w, D)) for i, (h, w) in enumerate(sizes)]
    ours = layer(maps)
    ref = _torch_tpn_layer(layer, maps)
    for a, b in zip(ours, ref):
        # float32 against float64: ~40 chained convs/norms of fan-in <= 288 accumulate a
        # relative error of a few 1e-6 of the map's scale; 2e-5 of it leaves a margin
        # of about 50 over the measured 4e-7, and a wrong weight or order is O(1).
        err = np.abs(np.asarray(a, np.float64) - b).max()
        assert err <= 2e-5 * np.abs(b).max(), (err, np.abs(b).max())


@pytest.mark.oracle
def test_group_norm_matches_torch():
    import torch
    import torch.nn.functional as F

    from msvision.models.layers import group_norm

    gn = group_norm(D, 8, dtype=None, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 5, 7, D)).astype(np.float32) * 2 + 1
    ref = F.group_norm(torch.from_numpy(x).permute(0, 3, 1, 2), 8, eps=1e-5).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(gn(jnp.asarray(x))), ref, rtol=1e-4, atol=1e-5)


def test_registry_builds_full_size_neck():
    """Full-size TPN(1, 2) on R50 features: 6 227 200 (initial pyramid) + 4 top-down ×
    66 304 + 4 bottom-up × 70 784 + 20 bottlenecks × 70 784 parameters."""
    in_channels = {3: 512, 4: 1024, 5: 2048}
    expected = {("tpn", 1, 2): 6_227_200 + 4 * 66_304 + 24 * 70_784}
    from msvision.models.layers import count_variables

    for (name, L, B), n in expected.items():
        cfg = dict(name=name, num_layers=L, num_bottlenecks=B)
        model = abstract_init(lambda: build_part("neck", cfg, in_channels=in_channels, rngs=nnx.Rngs(0)))
        assert count_variables(model) == n, (name, L, B)
