"""The ++ baselines' networks against torch modules built as mmdet builds them (oracle): the FCN
mask head (``FCNMaskHead``: Conv2d 3×3 + ReLU, ConvTranspose2d(2, stride 2) + ReLU, 1×1) and the
point head (``MaskPointHead``: Conv1d(1) FCs with the coarse logits concatenated before each)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.heads.mask_baselines.modules import FCNMaskHead, PointHead

pytestmark = pytest.mark.oracle


def test_fcn_mask_head_matches_torch():
    torch = pytest.importorskip("torch")
    c, nc = 8, 3
    head = FCNMaskHead(c, nc, num_convs=2, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for conv in head.convs:
        conv.bias[...] = jnp.asarray(rng.normal(size=c) * 0.1, jnp.float32)
    head.upsample.bias[...] = jnp.asarray(rng.normal(size=c) * 0.1, jnp.float32)
    x = rng.normal(size=(2, 5, 5, c)).astype(np.float32)
    ours = np.asarray(head(jnp.asarray(x)))

    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731
    layers = []
    for conv in head.convs:  # HWIO -> OIHW
        layer = torch.nn.Conv2d(c, c, 3, padding=1)
        layer.weight.data = t(np.transpose(np.asarray(conv.kernel[...]), (3, 2, 0, 1)))
        layer.bias.data = t(conv.bias[...])
        layers += [layer, torch.nn.ReLU()]
    deconv = torch.nn.ConvTranspose2d(c, c, 2, stride=2)
    # [a, b, in, out] -> torch's ConvTranspose2d [in, out, a, b]
    deconv.weight.data = t(np.transpose(np.asarray(head.upsample.kernel[...]), (2, 3, 0, 1)))
    deconv.bias.data = t(head.upsample.bias[...])
    logits = torch.nn.Conv2d(c, nc, 1)
    logits.weight.data = t(np.transpose(np.asarray(head.logits.kernel[...]), (3, 2, 0, 1)))
    logits.bias.data = t(head.logits.bias[...])
    net = torch.nn.Sequential(*layers, deconv, torch.nn.ReLU(), logits)
    with torch.no_grad():
        expected = net(t(np.transpose(x, (0, 3, 1, 2)))).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == (2, 10, 10, nc)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_point_head_matches_torch():
    torch = pytest.importorskip("torch")
    c, nc, hidden = 6, 3, 5
    head = PointHead(c, nc, hidden, num_fcs=3, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(1)
    head.logits.kernel[...] = jnp.asarray(rng.normal(size=head.logits.kernel.shape), jnp.float32)
    fine = rng.normal(size=(2, 7, c)).astype(np.float32)
    coarse = rng.normal(size=(2, 7, nc)).astype(np.float32)
    ours = np.asarray(head(jnp.asarray(fine), jnp.asarray(coarse)))

    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731

    def conv1d(linear):  # nnx.Linear [in, out] -> Conv1d weight [out, in, 1]
        layer = torch.nn.Conv1d(linear.kernel.shape[0], linear.kernel.shape[1], 1)
        layer.weight.data = t(np.asarray(linear.kernel[...]).T[..., None])
        layer.bias.data = t(linear.bias[...])
        return layer

    fcs = [conv1d(fc) for fc in head.fcs]
    fc_logits = conv1d(head.logits)
    with torch.no_grad():  # mmdet MaskPointHead.forward (coarse_pred_each_layer=True)
        fine_t, coarse_t = t(fine).permute(0, 2, 1), t(coarse).permute(0, 2, 1)
        x = torch.cat([fine_t, coarse_t], dim=1)
        for fc in fcs:
            x = torch.relu(fc(x))
            x = torch.cat((x, coarse_t), dim=1)
        expected = fc_logits(x).permute(0, 2, 1).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
