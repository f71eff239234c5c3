"""2-D convolution whose kernel gradient is a matmul on the CPU.

XLA:CPU runs the kernel-gradient convolution of ``conv_general_dilated`` (batch
as the contracted dimension) far below its forward speed: on the ResNet-50 / FPN
shapes of an 800×800 train step, 12–106 GFLOP/s against 90–366 for the forward on
two cores (``benchmarks/bench_conv_grad.py``). That made our R50-FPN-RetinaNet
train step 0.73× torchvision's on the CPU; with this op it is 2.1× faster.

:func:`conv2d_xla` keeps XLA's forward and input gradient and, on the CPU only,
computes the kernel gradient as matmuls of the strided input windows with the
output gradient (im2col, one matmul per kernel row, so the window copy is ``k``×
the input rather than ``k²``×). Other backends (cuDNN, TPU) keep XLA's own kernel
gradient, chosen at lowering time with ``lax.platform_dependent``. Small stride-1
k×k convolutions (under ``IM2COL_MIN_MACS``) keep XLA's on every backend.

Only groups = 1, NHWC inputs and HWIO kernels, explicit padding.

:func:`conv2d_xla` is the ``"xla"`` implementation of :func:`msvision.ops.conv.conv2d`
(the default, and the oneDNN op's path off the CPU).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from msvision.ops import platforms

Padding = tuple[tuple[int, int], tuple[int, int]]
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, kernel, stride: int, padding: Padding, dilation: int):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                    dimension_numbers=DIMENSION_NUMBERS)


def kernel_grad_im2col(x, output_grad, kernel_shape, stride: int, padding: Padding, dilation: int):
    """d(sum(conv(x, w) * output_grad))/dw by matmuls, in float32 -> ``kernel_shape``.

    ``dw[ky, kx, i, o] = sum_{b, y, x} xpad[b, s*y + d*ky, s*x + d*kx, i] * g[b, y, x, o]``.

    The kernel rows run as a loop over a dynamic row offset (``lax.map``), so each
    convolution shape compiles one window-copy kernel rather than one per row: the
    R50-TPN(3,2) RetinaNet train step compiles ~8 s faster (trace + compile, 67–76 s
    vs 75–85 s in interleaved runs) and steps as fast (R50-FPN: 9.3–11.4 vs
    10.2–11.6 s on two cores).
    """
    kh, kw = kernel_shape[:2]
    batch, out_h, out_w, _ = output_grad.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    channels = xp.shape[3]
    g = output_grad.reshape(-1, output_grad.shape[-1])
    span_h = stride * (out_h - 1) + 1

    def row(ky):
        band = lax.dynamic_slice_in_dim(xp, ky * dilation, span_h, axis=1)
        windows = [
            lax.slice(band, (0, 0, kx * dilation, 0), (batch, span_h, kx * dilation + stride * (out_w - 1) + 1, channels),
                      (1, stride, stride, 1))
            for kx in range(kw)
        ]
        cols = jnp.concatenate(windows, axis=-1).reshape(-1, kw * channels)  # [B*Ho*Wo, kw*I]
        return jnp.matmul(cols.T, g, preferred_element_type=jnp.float32).reshape(kw, channels, -1)

    if kh == 1:
        return row(0)[None]
    return lax.map(row, jnp.arange(kh))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x, kernel, stride, padding, dilation):
    return _xla_conv(x, kernel, stride, padding, dilation)


def _conv2d_fwd(x, kernel, stride, padding, dilation):
    return _xla_conv(x, kernel, stride, padding, dilation), (x, kernel)


def _conv2d_bwd(stride, padding, dilation, residuals, output_grad):
    x, kernel = residuals
    conv = functools.partial(_xla_conv, stride=stride, padding=padding, dilation=dilation)
    (x_grad,) = jax.linear_transpose(lambda x_: conv(x_, kernel), x)(output_grad)

    def xla_kernel_grad(x, output_grad):
        (grad,) = jax.linear_transpose(lambda k_: conv(x, k_), kernel)(output_grad)
        return grad

    def cpu_kernel_grad(x, output_grad):
        grad = kernel_grad_im2col(x, output_grad, kernel.shape, stride, padding, dilation)
        return grad.astype(kernel.dtype)

    if not _im2col_pays_off(kernel.shape, output_grad.shape, stride):
        return x_grad, xla_kernel_grad(x, output_grad)
    kernel_grad = platforms.platform_dependent(x, output_grad, cpu=cpu_kernel_grad, default=xla_kernel_grad)
    return x_grad, kernel_grad


# Below this many multiply-accumulates, a stride-1 k×k kernel gradient is as fast or
# faster with XLA:CPU's convolution (measured at batch 8: 75 M MACs 0.6–1.0×, 300 M
# MACs 1.4× for im2col); 1×1 and strided convolutions gain at every size measured.
IM2COL_MIN_MACS = 2**27


def _im2col_pays_off(kernel_shape, output_shape, stride: int) -> bool:
    kh, kw, cin, cout = kernel_shape
    macs = math.prod(output_shape[:3]) * kh * kw * cin * cout
    return kh * kw == 1 or stride > 1 or macs >= IM2COL_MIN_MACS


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d_xla(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, dilation: int) -> jax.Array:
    """``lax.conv_general_dilated`` (NHWC/HWIO, groups = 1, explicit ``padding``) with the
    kernel gradient of the module docstring; arguments as :func:`msvision.ops.conv.conv2d`."""
    return _conv2d(x, kernel, int(stride), tuple((int(a), int(b)) for a, b in padding), int(dilation))
