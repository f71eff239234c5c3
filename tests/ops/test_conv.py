"""conv2d: XLA's forward and input gradient, a matmul kernel gradient on the CPU.

Oracle: the gradients JAX derives for ``lax.conv_general_dilated`` itself, and
torch's ``conv2d`` gradients for one case.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from msvision.ops.conv import conv2d
from msvision.ops.conv_xla import kernel_grad_im2col

CASES = [  # (H, W, in, out, k, stride, padding, dilation)
    (9, 11, 5, 7, 3, 1, ((1, 1), (1, 1)), 1),
    (9, 11, 5, 7, 3, 2, ((1, 1), (1, 1)), 1),  # odd size, stride 2
    (10, 8, 4, 6, 1, 2, ((0, 0), (0, 0)), 1),  # 1x1 stride-2 downsample
    (16, 13, 3, 8, 7, 2, ((3, 3), (3, 3)), 1),  # ResNet stem
    (12, 12, 4, 4, 3, 1, ((2, 2), (2, 2)), 2),  # dilated
    (8, 9, 3, 5, 3, 1, ((0, 2), (1, 0)), 1),  # asymmetric padding
]


def _lax_conv(x, w, stride, padding, dilation):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("h, w, cin, cout, k, stride, padding, dilation", CASES)
def test_forward_and_gradients_match_lax_conv(h, w, cin, cout, k, stride, padding, dilation):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, h, w, cin))
    kernel = jax.random.normal(kw, (k, k, cin, cout))
    ref_out, ref_vjp = jax.vjp(lambda x, w: _lax_conv(x, w, stride, padding, dilation), x, kernel)
    out, vjp = jax.vjp(lambda x, w: conv2d(x, w, stride, padding, dilation), x, kernel)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref_out))
    g = jax.random.normal(kg, out.shape)
    (ref_dx, ref_dw), (dx, dw) = ref_vjp(g), jax.jit(vjp)(g)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(ref_dx), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(ref_dw), rtol=1e-4, atol=1e-4)
    # the im2col helper on its own, in float64 arithmetic against a direct sum
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), padding[0], padding[1], (0, 0)))
    gn = np.asarray(g, np.float64)
    ho, wo = gn.shape[1:3]
    direct = np.zeros((k, k, cin, cout))
    for ky in range(k):
        for kx_ in range(k):
            window = xp[:, ky * dilation: ky * dilation + stride * (ho - 1) + 1: stride,
                        kx_ * dilation: kx_ * dilation + stride * (wo - 1) + 1: stride]
            direct[ky, kx_] = np.einsum("bhwi,bhwo->io", window, gn)
    im2col = kernel_grad_im2col(x, g, kernel.shape, stride, padding, dilation)
    np.testing.assert_allclose(np.asarray(im2col), direct, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_size, stride, cpu_convolutions", [
    (3, 2, 2),  # strided: matmul kernel gradient
    (3, 1, 3),  # small stride-1 3x3 (< IM2COL_MIN_MACS): XLA's kernel gradient
])
def test_which_kernel_gradient_runs_on_cpu_and_cuda(kernel_size, stride, cpu_convolutions):
    """The differentiated conv on the CPU has a convolution for the forward and the
    input gradient, and one for the kernel gradient only where im2col does not pay
    off; lowered for CUDA it always keeps XLA's three. (XLA:CPU turns 1x1
    convolutions into dots, so they are checked through the rule below.)"""
    x = jnp.ones((2, 12, 12, 4))
    kernel = jnp.ones((kernel_size, kernel_size, 4, 8))
    pad = ((kernel_size // 2,) * 2,) * 2

    def loss(x, w):
        return jnp.sum(conv2d(x, w, stride, pad) ** 2)

    grad = jax.grad(loss, argnums=(0, 1))
    cpu_text = jax.jit(grad).lower(x, kernel).compile().as_text()
    assert cpu_text.count("convolution(") == cpu_convolutions
    cuda_text = jax.jit(grad).trace(x, kernel).lower(lowering_platforms=("cuda",)).as_text()
    assert cuda_text.count("stablehlo.convolution") == 3, "forward + input gradient + kernel gradient"


def test_large_stride1_conv_uses_im2col_on_cpu():
    from msvision.ops.conv_xla import IM2COL_MIN_MACS, _im2col_pays_off

    x = jnp.ones((2, 48, 48, 64))
    kernel = jnp.ones((3, 3, 64, 64))
    assert 2 * 48 * 48 * 9 * 64 * 64 >= IM2COL_MIN_MACS
    grad = jax.grad(lambda x, w: jnp.sum(conv2d(x, w, 1, ((1, 1), (1, 1))) ** 2), argnums=(0, 1))
    assert jax.jit(grad).lower(x, kernel).compile().as_text().count("convolution(") == 2
    assert _im2col_pays_off((1, 1, 4, 8), (2, 12, 12, 8), 1)  # 1x1 at any size
    assert not _im2col_pays_off((3, 3, 4, 8), (2, 12, 12, 8), 1)


def test_bfloat16_and_groups_error():
    x = jax.random.normal(jax.random.key(1), (1, 8, 8, 4)).astype(jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(2), (3, 3, 4, 4)).astype(jnp.bfloat16)
    dw = jax.grad(lambda w: jnp.sum(conv2d(x, w, 1, ((1, 1), (1, 1))).astype(jnp.float32)))(kernel)
    ref = jax.grad(lambda w: jnp.sum(_lax_conv(x, w, 1, ((1, 1), (1, 1)), 1).astype(jnp.float32)))(kernel)
    assert dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(dw, np.float32), np.asarray(ref, np.float32), rtol=2e-2, atol=2e-1)
    with pytest.raises(ValueError, match="groups=1"):
        conv2d(x, kernel[:, :, :1], 1, ((1, 1), (1, 1)))


def test_matches_torch_conv2d_gradients():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 13, 10, 6)).astype(np.float32)
    w = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)
    g = rng.normal(size=(2, 7, 5, 5)).astype(np.float32)
    out, vjp = jax.vjp(lambda x, w: conv2d(x, w, 2, ((1, 1), (1, 1))), jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(g))
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
    tout = torch.nn.functional.conv2d(tx, tw, stride=2, padding=1)
    tout.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dx), tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dw), tw.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)
