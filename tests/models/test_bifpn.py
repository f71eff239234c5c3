"""BiFPN baseline (thesis table 3.1): shapes, structure, fusion weights, gradients, and
torch transcriptions of the author's BiFPN (DetSeg ``deprecated/bifpn.py``: input stage
and BiFPNLayer, GroupNorm, separable convs) and of PyTorch's default conv init as oracles."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.abstract import abstract_init
from msvision.models.layers import GroupNorm, count_variables
from msvision.models.necks.bifpn import BiFPN, BiFPNLayer, ConvNode, SeparableConvNode, fast_normalized_weights

D = 32
IN_P3 = {3: 16, 4: 24, 5: 40}
IN_P2 = {2: 8, 3: 16, 4: 24, 5: 40}


def _features(in_channels, size, batch=2, seed=0):
    h, w = size
    keys = jax.random.split(jax.random.key(seed), len(in_channels))
    return {
        level: jax.random.normal(k, (batch, -(-h // 2**level), -(-w // 2**level), c))
        for k, (level, c) in zip(keys, sorted(in_channels.items()))
    }


@pytest.mark.parametrize("in_channels,out_levels,size", [
    (IN_P3, (3, 4, 5, 6, 7), (203, 145)),
    (IN_P2, (2, 3, 4, 5, 6, 7), (101, 77)),
])
def test_bifpn_shapes_and_gradients(in_channels, out_levels, size):
    model = BiFPN(in_channels, out_levels=out_levels, num_layers=2, channels=D, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    feats = _features(in_channels, size)
    w = jax.random.normal(jax.random.key(1), (1, 1, 1, D))

    def loss(feats):
        out = nnx.merge(graphdef, state)(feats)
        return sum(jnp.sum(o * w) for o in out.values()), out

    grads, out = jax.jit(jax.grad(loss, has_aux=True))(feats)
    h, w_ = size
    for level in out_levels:
        hl, wl = h, w_
        for _ in range(level):
            hl, wl = -(-hl // 2), -(-wl // 2)
        assert out[level].shape == (2, hl, wl, D)
    for level, g in grads.items():
        assert float(jnp.linalg.norm(g)) > 0, level


def test_bifpn_structure_and_parameter_count():
    """2(n−1) separable-conv nodes and 5(n−1) fusion weights per layer; at D = 256 a
    node has 9·256 + 256 (depthwise + bias) + 256² (pointwise) + 512 (GN) = 68 608."""
    model = abstract_init(lambda: BiFPN(IN_P3, num_layers=3, channels=256, rngs=nnx.Rngs(0)))
    nodes = [m for _, m in model.iter_modules() if isinstance(m, SeparableConvNode)]
    assert len(nodes) == 3 * 8
    assert count_variables(nodes[0]) == 68_608
    layer = model.layers[0]
    assert layer.top_down_weights.shape == (4, 2) and layer.bottom_up_weights.shape == (4, 3)
    assert count_variables(layer) == 8 * 68_608 + 20
    # the author's separable_conv=False node: 3x3 conv without bias + GN
    dense = nnx.eval_shape(lambda: BiFPNLayer(5, 256, separable_conv=False, rngs=nnx.Rngs(0)))
    assert count_variables(dense) == 8 * (9 * 256 * 256 + 512) + 20


def test_fast_normalized_fusion():
    raw = jnp.array([[1.0, 1.0, 1.0], [-2.0, 3.0, 1.0]])
    w = fast_normalized_weights(raw)
    np.testing.assert_allclose(w[0], np.full(3, 1 / (3 + 1e-4)), rtol=1e-6)
    assert float(w[1, 0]) == 0.0  # ReLU keeps weights non-negative
    np.testing.assert_allclose(jnp.sum(w, -1), [3 / (3 + 1e-4), 4 / (4 + 1e-4)], rtol=1e-6)


def _torch_bifpn_layer(layer, maps):
    """The author's BiFPNLayer.forward (DetSeg models/cores/bifpn.py) with ``layer``'s weights."""
    import torch
    import torch.nn.functional as F

    def t(a):
        return torch.from_numpy(np.array(a))

    def node(m, x):
        x = F.relu(x)
        if isinstance(m, ConvNode):  # separable_conv=False: ReLU -> conv3x3 (no bias) -> norm
            x = F.conv2d(x, t(m.conv.kernel[...]).permute(3, 2, 0, 1), padding=1)
            return F.group_norm(x, 8, t(m.norm.scale[...]), t(m.norm.bias[...]), eps=1e-5)
        dw = t(m.depthwise.kernel[...]).permute(3, 2, 0, 1)  # [3,3,1,C] -> [C,1,3,3]
        x = F.conv2d(x, dw, t(m.depthwise.bias[...]), padding=1, groups=x.shape[1])
        x = F.conv2d(x, t(m.pointwise.kernel[...]).permute(3, 2, 0, 1))
        return F.group_norm(x, 8, t(m.norm.scale[...]), t(m.norm.bias[...]), eps=1e-5)

    in_maps = [t(m).permute(0, 3, 1, 2) for m in maps]
    n = len(in_maps)
    td_w = F.relu(t(layer.top_down_weights[...]))
    td_w = td_w / (td_w.sum(dim=1, keepdim=True) + 1e-4)
    bu_w = F.relu(t(layer.bottom_up_weights[...]))
    bu_w = bu_w / (bu_w.sum(dim=1, keepdim=True) + 1e-4)
    td_maps = [in_maps[-1]]
    for i in range(n - 2, -1, -1):
        up = F.interpolate(td_maps[0], size=in_maps[i].shape[-2:], mode="nearest")
        td_maps.insert(0, node(layer.top_down[i], td_w[i, 0] * in_maps[i] + td_w[i, 1] * up))
    bu_maps = [td_maps[0]]
    for i in range(0, n - 1):
        down = F.interpolate(bu_maps[-1], size=td_maps[i + 1].shape[-2:], mode="nearest")
        fused = bu_w[i, 0] * in_maps[i + 1] + bu_w[i, 1] * td_maps[i + 1] + bu_w[i, 2] * down
        bu_maps.append(node(layer.bottom_up[i], fused))
    return [m.permute(0, 2, 3, 1).numpy() for m in bu_maps]


def _randomize_norms(module):
    """Non-trivial GroupNorm affines, so that the oracle checks where they are applied."""
    norms = [m for _, m in module.iter_modules() if isinstance(m, GroupNorm)]
    assert norms
    for i, norm in enumerate(norms):
        norm.scale[...] = 1.0 + 0.3 * jax.random.normal(jax.random.key(10 + i), norm.scale.shape)
        norm.bias[...] = 0.3 * jax.random.normal(jax.random.key(500 + i), norm.bias.shape)


@pytest.mark.oracle
@pytest.mark.parametrize("separable_conv", [True, False])
def test_bifpn_layer_matches_torch_transcription(separable_conv):
    pytest.importorskip("torch")
    layer = BiFPNLayer(5, D, separable_conv=separable_conv, rngs=nnx.Rngs(2))
    layer.top_down_weights[...] = jax.random.uniform(jax.random.key(0), (4, 2), minval=-0.2, maxval=2.0)
    layer.bottom_up_weights[...] = jax.random.uniform(jax.random.key(1), (4, 3), minval=-0.2, maxval=2.0)
    _randomize_norms(layer)
    sizes = [(13, 10), (7, 5), (4, 3), (2, 2), (1, 1)]
    maps = [jax.random.normal(jax.random.key(i), (2, h, w, D)) for i, (h, w) in enumerate(sizes)]
    for a, b in zip(layer(maps), _torch_bifpn_layer(layer, maps)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4)


def _torch_bifpn_input(model, feats):
    """The author's ``BiFPN.forward`` input stage (deprecated/bifpn.py, norm_type='group')
    with ``model``'s weights: 1×1 ``in_projs`` on C3–C5, P6 = conv3×3/2(C5) (raw, no
    activation), P7 = [GN(8), ReLU, conv3×3/2](P6)."""
    import torch
    import torch.nn.functional as F

    def t(a):
        return torch.from_numpy(np.array(a))

    def conv(c, x, stride=1):
        w = t(c.kernel[...]).permute(3, 2, 0, 1)
        return F.conv2d(x, w, t(c.bias[...]), stride=stride, padding=w.shape[-1] // 2)

    proj = model.input_proj
    maps = [conv(c, t(feats[l]).permute(0, 3, 1, 2)) for l, c in zip(proj.lateral_levels, proj.lateral)]
    bu = t(feats[proj.in_levels[-1]]).permute(0, 3, 1, 2)
    for i, c in enumerate(proj.extra):
        if i > 0:
            gn = proj.extra_norm[i - 1]
            bu = F.relu(F.group_norm(bu, 8, t(gn.scale[...]), t(gn.bias[...]), eps=1e-5))
        bu = conv(c, bu, 2)
        maps.append(bu)
    return maps


@pytest.mark.oracle
def test_bifpn_matches_torch_transcription_of_author_bifpn():
    """Whole neck (input stage + 2 layers) against the author's forward, odd image size."""
    pytest.importorskip("torch")
    model = BiFPN(IN_P3, num_layers=2, channels=D, rngs=nnx.Rngs(3))
    assert len(model.input_proj.extra_norm) == 1  # the P7 path's GN (author's ``BiFPN.in_projs``)
    _randomize_norms(model)
    for i, layer in enumerate(model.layers):
        layer.top_down_weights[...] = jax.random.uniform(jax.random.key(20 + i), (4, 2), minval=-0.2, maxval=2.0)
        layer.bottom_up_weights[...] = jax.random.uniform(jax.random.key(30 + i), (4, 3), minval=-0.2, maxval=2.0)
    feats = _features(IN_P3, (203, 145))
    maps = [m.permute(0, 2, 3, 1).numpy() for m in _torch_bifpn_input(model, feats)]
    np.testing.assert_allclose(np.asarray(model.input_proj(feats)[6]), maps[3], rtol=1e-4, atol=1e-4)
    for layer in model.layers:
        maps = _torch_bifpn_layer(layer, maps)
    out = model(feats)
    for level, ref in zip((3, 4, 5, 6, 7), maps):
        np.testing.assert_allclose(np.asarray(out[level]), ref, rtol=1e-4, atol=1e-4)


def test_bifpn_old_input_stage_options():
    """``p6_relu`` / ``p7_norm=False`` / ``input_init='c2_xavier'`` give msvision's earlier input stage:
    P6 = ReLU(conv(C5)), P7 = conv(ReLU(P6)), zero biases, and no GroupNorm there."""
    model = BiFPN(IN_P3, num_layers=1, channels=D, p6_relu=True, p7_norm=False, input_init="c2_xavier",
                  rngs=nnx.Rngs(0))
    proj = model.input_proj
    assert proj.extra_norm is None
    assert all(float(jnp.abs(c.bias[...]).max()) == 0.0 for c in (*proj.lateral, *proj.extra))
    feats = _features(IN_P3, (64, 64))
    out = proj(feats)
    p6 = jax.nn.relu(proj.extra[0](feats[5]))
    np.testing.assert_allclose(out[6], p6, rtol=1e-6)
    np.testing.assert_allclose(out[7], proj.extra[1](jax.nn.relu(p6)), rtol=1e-6)
    with pytest.raises(ValueError):
        BiFPN(IN_P3, num_layers=1, channels=D, p6_relu=True, rngs=nnx.Rngs(0))  # needs p7_norm=False


@pytest.mark.oracle
@pytest.mark.parametrize("input_init", ["torch", "c2_xavier"])
def test_bifpn_input_init_statistics(input_init):
    """Every input-stage conv's kernel and bias against the distribution torch gives them:
    ``nn.Conv2d``'s default init (the author's BiFPN sets none) for ``'torch'``,
    ``kaiming_uniform_(a=1)`` with a zero bias for ``'c2_xavier'``; and every BiFPN-layer
    conv against ``nn.Conv2d``'s default init (depthwise fan-in 9)."""
    torch = pytest.importorskip("torch")
    in_channels = {3: 64, 4: 96, 5: 128}
    model = BiFPN(in_channels, num_layers=1, channels=96, input_init=input_init, rngs=nnx.Rngs(0))
    torch.manual_seed(0)

    def check(kernel, bias, cin, k, groups=1, torch_default=True):
        tconv = torch.nn.Conv2d(cin, kernel.shape[-1], k, groups=groups)
        if not torch_default:
            torch.nn.init.kaiming_uniform_(tconv.weight, a=1)
            torch.nn.init.zeros_(tconv.bias)
        ours, ref = np.asarray(kernel).ravel(), tconv.weight.detach().numpy().ravel()
        assert ours.size == ref.size
        # uniform samples: both maxima lie within a few 1/n of the bound (20/n: P < e^-20), the std within ~4/sqrt(n)
        bound, tol = np.abs(ref).max(), 20 / ours.size
        assert bound * (1 - tol) <= np.abs(ours).max() <= bound * (1 + tol)
        assert abs(ours.std() / ref.std() - 1) < 4 / math.sqrt(ours.size) + 0.01
        if bias is not None:
            b, rb = np.asarray(bias), tconv.bias.detach().numpy()
            if torch_default:
                assert np.abs(b).max() <= 1 / math.sqrt(cin // groups * k * k) and np.abs(b).max() > 0
                assert abs(np.abs(b).max() / np.abs(rb).max() - 1) < 0.25
            else:
                assert np.all(b == 0) and np.all(rb == 0)

    proj = model.input_proj
    default = input_init == "torch"
    for level, conv in zip(proj.lateral_levels, proj.lateral):
        check(conv.kernel[...], conv.bias[...], in_channels[level], 1, torch_default=default)
    check(proj.extra[0].kernel[...], proj.extra[0].bias[...], 128, 3, torch_default=default)
    check(proj.extra[1].kernel[...], proj.extra[1].bias[...], 96, 3, torch_default=default)
    for node in (*model.layers[0].top_down, *model.layers[0].bottom_up):
        check(node.depthwise.kernel[...], node.depthwise.bias[...], 96, 3, groups=96)
        check(node.pointwise.kernel[...], None, 96, 1)
        assert np.all(np.asarray(node.norm.scale[...]) == 1) and np.all(np.asarray(node.norm.bias[...]) == 0)
