"""FPN neck: shapes (odd sizes, P3–P7 and P2–P7) and torchvision's FPN as an oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.backbones.resnet import ResNet
from msvision.models.necks.base import InitialPyramid
from msvision.models.necks.fpn import FPN


@pytest.mark.parametrize("out_levels", [(3, 4, 5, 6, 7), (2, 3, 4, 5, 6, 7)])
@pytest.mark.parametrize("variant", ["mmdet", "retinanet"])
def test_shapes_odd_input(out_levels, variant):
    in_levels = tuple(l for l in out_levels if l <= 5)
    backbone = ResNet(18, out_levels=in_levels, width=8, rngs=nnx.Rngs(0))
    neck = FPN(backbone.out_channels, out_levels, 16, variant=variant, rngs=nnx.Rngs(1))
    assert neck.in_levels == in_levels and neck.out_levels == out_levels and neck.channels == 16
    images = jax.ShapeDtypeStruct((2, 100, 75, 3), jnp.float32)
    pyramid = jax.eval_shape(lambda x: neck(backbone(x)), images)  # shapes only, no compile
    # conv/pool output sizes: 100 -> 50 -> 25 -> 13 -> 7 -> 4 -> 2 -> 1; 75 -> 38 -> 19 -> 10 -> 5 -> 3 -> 2 -> 1
    sizes = {2: (25, 19), 3: (13, 10), 4: (7, 5), 5: (4, 3), 6: (2, 2), 7: (1, 1)}
    assert sorted(pyramid) == list(out_levels)
    for level in out_levels:
        assert pyramid[level].shape == (2, *sizes[level], 16)


def test_initial_pyramid_extra_sources():
    feats = {l: jax.random.normal(jax.random.key(l), (1, 2 ** (7 - l), 2 ** (7 - l), 4 * l)) for l in (3, 4, 5)}
    chans = {l: 4 * l for l in (3, 4, 5)}
    for source, p6_in in (("input", 20), ("lateral", 8)):
        init = InitialPyramid(chans, (3, 4, 5, 6, 7), 8, extra_source=source, rngs=nnx.Rngs(0))
        assert init.extra[0].in_features == p6_in
        out, p6, p7 = jax.jit(
            lambda f: (
                (o := init(f)),
                init.extra[0](f[5] if source == "input" else o[5]),
                init.extra[1](jax.nn.relu(o[6])),
            )
        )(feats)
        np.testing.assert_allclose(out[6], p6, rtol=1e-6)
        np.testing.assert_allclose(out[7], p7, rtol=1e-6)
        assert float(jnp.abs(init.lateral[0].bias[...]).max()) == 0.0


@pytest.mark.oracle
def test_matches_torchvision_fpn_retinanet_variant():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    chans = {3: 8, 4: 12, 5: 16}
    torch.manual_seed(0)
    tv = ops.FeaturePyramidNetwork([8, 12, 16], 6, extra_blocks=LastLevelP6P7(16, 6)).eval()
    ours = FPN(chans, (3, 4, 5, 6, 7), 6, variant="retinanet", rngs=nnx.Rngs(0))

    def copy(conv, tconv):
        conv.kernel[...] = jnp.asarray(tconv.weight.detach().numpy().transpose(2, 3, 1, 0))
        conv.bias[...] = jnp.asarray(tconv.bias.detach().numpy())

    for i in range(3):
        copy(ours.initial.lateral[i], tv.inner_blocks[i][0])
        copy(ours.output[i], tv.layer_blocks[i][0])
    copy(ours.initial.extra[0], tv.extra_blocks.p6)
    copy(ours.initial.extra[1], tv.extra_blocks.p7)

    sizes = {3: (13, 10), 4: (7, 5), 5: (4, 3)}
    gen = torch.Generator().manual_seed(0)
    x = {l: torch.randn(2, chans[l], *sizes[l], generator=gen) for l in (3, 4, 5)}
    with torch.no_grad():
        expected = list(tv({f"c{l}": x[l] for l in (3, 4, 5)}).values())
    got = ours({l: jnp.asarray(x[l].numpy().transpose(0, 2, 3, 1)) for l in (3, 4, 5)})
    for level, exp in zip((3, 4, 5, 6, 7), expected):
        np.testing.assert_allclose(np.asarray(got[level]), exp.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=1e-5)
