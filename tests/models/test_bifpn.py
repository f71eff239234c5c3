"""BiFPN baseline (thesis table 3.1): shapes, structure, fusion weights, gradients and a
torch transcription of the author's BiFPNLayer (GroupNorm, separable convs) as oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.layers import count_variables
from msvision.models.necks.bifpn import BiFPN, BiFPNLayer, SeparableConvNode, fast_normalized_weights
from msvision.models.abstract import abstract_init

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


@pytest.mark.oracle
def test_bifpn_layer_matches_torch_transcription():
    layer = BiFPNLayer(5, D, rngs=nnx.Rngs(2))
    layer.top_down_weights[...] = jax.random.uniform(jax.random.key(0), (4, 2), minval=-0.2, maxval=2.0)
    layer.bottom_up_weights[...] = jax.random.uniform(jax.random.key(1), (4, 3), minval=-0.2, maxval=2.0)
    for i, norm in enumerate(m for _, m in layer.iter_modules() if isinstance(m, nnx.GroupNorm)):
        norm.scale[...] = 1.0 + 0.3 * jax.random.normal(jax.random.key(10 + i), norm.scale.shape)
        norm.bias[...] = 0.3 * jax.random.normal(jax.random.key(50 + i), norm.bias.shape)
    sizes = [(13, 10), (7, 5), (4, 3), (2, 2), (1, 1)]
    maps = [jax.random.normal(jax.random.key(i), (2, h, w, D)) for i, (h, w) in enumerate(sizes)]
    for a, b in zip(layer(maps), _torch_bifpn_layer(layer, maps)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4)
