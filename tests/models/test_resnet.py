"""ResNet backbone: torchvision equivalence through the converter, freezing, param counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.backbones.convert_torchvision import load_torchvision_resnet
from msvision.models.backbones.resnet import ResNet
from msvision.models.layers import Frozen, FrozenStat, count_variables
from msvision.models.abstract import abstract_init


def _randomize_bn(torch_model, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in torch_model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean.data = torch.randn(n, generator=g) * 0.1
            m.running_var.data = torch.rand(n, generator=g) + 0.5
    return torch_model.eval()


def _torch_features(tm, x):
    import torch

    with torch.no_grad():
        y = tm.maxpool(tm.relu(tm.bn1(tm.conv1(x))))
        out = {}
        for level, layer in zip(range(2, 6), (tm.layer1, tm.layer2, tm.layer3, tm.layer4)):
            y = layer(y)
            out[level] = y.permute(0, 2, 3, 1).numpy()
    return out


@pytest.mark.oracle
@pytest.mark.parametrize("kind", ["resnet18", "bottleneck_1111"])
def test_matches_torchvision(kind):
    torch = pytest.importorskip("torch")
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    if kind == "resnet18":
        tm = tvm.resnet18(weights=None)
        ours = ResNet(18, out_levels=(2, 3, 4, 5), rngs=nnx.Rngs(0))
    else:
        tm = tvm.ResNet(tvm.resnet.Bottleneck, [1, 1, 1, 1])
        ours = ResNet(50, out_levels=(2, 3, 4, 5), blocks_per_stage=(1, 1, 1, 1), rngs=nnx.Rngs(0))
    _randomize_bn(tm)
    load_torchvision_resnet(ours, tm.state_dict())
    x = torch.randn(2, 3, 67, 64, generator=torch.Generator().manual_seed(1))
    expected = _torch_features(tm, x)
    got = ours(jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
    for level in range(2, 6):
        assert got[level].shape == expected[level].shape
        np.testing.assert_allclose(np.asarray(got[level]), expected[level], atol=1e-4, rtol=1e-4)


def test_converter_rejects_mismatch():
    ours = abstract_init(lambda: ResNet(18, out_levels=(3, 4, 5), width=8, rngs=nnx.Rngs(0)))  # shapes suffice
    with pytest.raises(ValueError, match="shape mismatch for 'conv1.weight'"):
        load_torchvision_resnet(ours, {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    with pytest.raises(ValueError, match="missing keys"):
        load_torchvision_resnet(ours, {"fc.weight": np.zeros((10, 512), np.float32)})


@pytest.mark.oracle
def test_resnet50_param_count_equals_torchvision():
    pytest.importorskip("torch")
    tvm = pytest.importorskip("torchvision.models")
    tm = tvm.resnet50(weights=None)
    expected = sum(p.numel() for n, p in tm.named_parameters() if not n.startswith("fc."))
    model = abstract_init(lambda: ResNet(50, out_levels=(3, 4, 5), rngs=nnx.Rngs(0)))
    # torch parameters = our Param + Frozen weights (BN statistics are buffers in both).
    total = count_variables(model, nnx.Param) + count_variables(model, Frozen, exclude=(FrozenStat,))
    assert total == expected == 23_508_032


def test_frozen_stages_and_gradients():
    model = ResNet(18, out_levels=(3, 4, 5), width=8, frozen_stages=1, rngs=nnx.Rngs(0))
    assert isinstance(model.conv1.kernel, Frozen)
    assert isinstance(model.layer1[0].conv1.kernel, Frozen)
    assert isinstance(model.layer2[0].conv1.kernel, nnx.Param)
    assert isinstance(model.layer2[0].bn1.weight, Frozen)
    trainable = ResNet(18, out_levels=(3, 4, 5), width=8, frozen_stages=0, freeze_bn=False, rngs=nnx.Rngs(0))
    assert isinstance(trainable.conv1.kernel, nnx.Param) and isinstance(trainable.bn1.weight, nnx.Param)
    assert isinstance(trainable.bn1.mean, FrozenStat)

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(0), (1, 32, 48, 3))

    def loss(p):
        feats = nnx.merge(graphdef, p, rest)(x)
        return sum(jnp.sum(f**2) for f in feats.values())

    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    feats = model(x)
    assert {l: f.shape for l, f in feats.items()} == {3: (1, 4, 6, 16), 4: (1, 2, 3, 32), 5: (1, 1, 2, 64)}
