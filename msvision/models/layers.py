"""Small building blocks shared by backbones, necks and heads.

Besides the convolution and normalisation layers: the PyTorch-default ``nn.Linear`` /
``nn.Conv2d`` (:func:`torch_linear`, :func:`torch_default_conv`), the two-layer MLP of
the mask heads (:class:`TwoLayerMLP`) and the pre-activation bottleneck of the TPN,
bFPN/hFPN necks and the FQDet selector (:class:`PreActConv`, :class:`BottleneckBranch`,
:class:`Bottleneck`; thesis section 3.3.2, figure 3.3).

Layout is NHWC, convolution kernels HWIO. Parameters are stored in float32; each
module takes a compute ``dtype`` (e.g. ``jnp.bfloat16``) to which inputs and
weights are cast before the matmul-heavy operation.

Variable types:
  ``nnx.Param``   trainable weights (the only ones the train step differentiates).
  ``Frozen``      frozen weights: frozen BatchNorm affine, frozen stem/stage-1 convs.
  ``FrozenStat``  a ``Frozen`` subtype for BatchNorm running statistics: never
                  trained and, like torch buffers, not counted as parameters.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.ops.conv import conv2d
from msvision.ops.padding import apply_mask, padding_mask

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

GROUP_NORM_EPS = 1e-5  # torch.nn.GroupNorm default


class Frozen(nnx.Variable):
    """A weight that is loaded or initialised but never updated by the optimizer."""


class FrozenStat(Frozen):
    """A frozen running statistic (BatchNorm mean/var): a buffer, not a parameter."""


# --- initialisers (torch/detectron2 names, as in the author's code) ---------------


def kaiming_uniform(a: float = 1.0) -> Initializer:
    """``torch.nn.init.kaiming_uniform_(w, a)``: U(±gain·sqrt(3/fan_in)), gain² = 2/(1+a²).

    ``a=1`` is detectron2's ``c2_xavier_fill`` (used for FPN/TPN projections);
    ``a=sqrt(5)`` is PyTorch's default ``Conv2d`` init.
    """
    return nnx.initializers.variance_scaling(2.0 / (1.0 + a * a), "fan_in", "uniform")


def kaiming_normal_fan_out() -> Initializer:
    """``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` (torchvision ResNet convs)."""
    return nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_bias(fan_in: int) -> Initializer:
    """PyTorch's default conv bias init U(±1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def constant(value: float) -> Initializer:
    return nnx.initializers.constant(value)


# --- modules ------------------------------------------------------------------------


class Conv2d(nnx.Module):
    """2-D convolution on NHWC inputs with PyTorch-style symmetric padding.

    Explicit symmetric padding (``kernel_size // 2`` by default) rather than XLA
    ``SAME`` keeps output sizes and sampling positions identical to torchvision for
    odd input sizes and stride 2 (``SAME`` pads asymmetrically there).

    Attributes:
      kernel: ``[k, k, in, out]`` (``nnx.Param``, or ``Frozen`` when ``frozen``).
      bias: ``[out]`` or absent.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        stride: int = 1,
        *,
        padding: Optional[int] = None,
        dilation: int = 1,
        use_bias: bool = True,
        kernel_init: Initializer = kaiming_uniform(1.0),
        bias_init: Initializer = nnx.initializers.zeros,
        frozen: bool = False,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = dilation * (kernel_size // 2) if padding is None else padding
        self.dilation = dilation
        self.dtype = dtype
        var = Frozen if frozen else nnx.Param
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = var(kernel_init(rngs.params(), shape, jnp.float32))
        self.bias = var(bias_init(rngs.params(), (out_features,), jnp.float32)) if use_bias else None

    def __call__(self, x: Array, mask: Optional[Array] = None) -> Array:
        """``x: [B, H, W, in]`` → ``[B, H', W', out]``.

        ``mask``: optional ``[B, H, W, 1] bool`` valid cells of ``x``; a k×k
        convolution (k > 1) then sees zeros outside them, as the unpadded image
        would (:mod:`msvision.ops.padding`). 1×1 convolutions ignore it.
        """
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        if self.kernel_size > 1:
            x = apply_mask(x, mask)
        p = self.padding
        # lax.conv_general_dilated, with a matmul kernel gradient on the CPU
        y = conv2d(x, self.kernel[...].astype(dtype), self.stride, ((p, p), (p, p)), self.dilation)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class FrozenBatchNorm(nnx.Module):
    """BatchNorm as a fixed affine map (torchvision ``FrozenBatchNorm2d``).

    ``y = x * scale + shift`` with ``scale = weight / sqrt(var + eps)`` and
    ``shift = bias - mean * scale``. The running statistics are ``FrozenStat``;
    weight/bias are ``Frozen`` (or ``nnx.Param`` when ``trainable_affine``, i.e. the
    backbone's ``freeze_bn=False``: the statistics still stay fixed).
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        trainable_affine: bool = False,
        dtype: Optional[Dtype] = None,
    ):
        self.num_features = num_features
        self.eps = eps
        self.dtype = dtype
        var = nnx.Param if trainable_affine else Frozen
        self.weight = var(jnp.ones((num_features,), jnp.float32))
        self.bias = var(jnp.zeros((num_features,), jnp.float32))
        self.mean = FrozenStat(jnp.zeros((num_features,), jnp.float32))
        self.var = FrozenStat(jnp.ones((num_features,), jnp.float32))

    def __call__(self, x: Array, mask: Optional[Array] = None) -> Array:
        """``x: [..., C]``; ``mask`` is accepted for interface parity with
        :class:`GroupNorm` and unused (a pointwise map)."""
        del mask
        scale = self.weight[...] * jax.lax.rsqrt(self.var[...] + self.eps)
        shift = self.bias[...] - self.mean[...] * scale
        dtype = self.dtype or x.dtype
        return x.astype(dtype) * scale.astype(dtype) + shift.astype(dtype)


class GroupNorm(nnx.Module):
    """``torch.nn.GroupNorm(num_groups, num_features)`` on NHWC, padding-aware.

    Statistics over H, W and the channels of each group, taken over the valid cells
    only when a ``mask`` is given (so an image's output does not depend on the
    padding of its batch; :mod:`msvision.ops.padding`). Computed in float32.

    Attributes:
      scale, bias: ``[num_features]`` affine (``nnx.Param``; names as ``nnx.GroupNorm``).
    """

    def __init__(self, num_features: int, num_groups: int = 8, *, epsilon: float = 1e-5,
                 scale_init: Initializer = nnx.initializers.ones, dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        if num_features % num_groups:
            raise ValueError(f"GroupNorm: {num_features} features are not divisible into {num_groups} groups")
        self.num_features = num_features
        self.num_groups = num_groups
        self.epsilon = epsilon
        self.dtype = dtype
        self.scale = nnx.Param(scale_init(rngs.params(), (num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

    def __call__(self, x: Array, mask: Optional[Array] = None) -> Array:
        """``x: [B, H, W, C]``, ``mask: [B, H, W, 1] bool`` or None → ``[B, H, W, C]``."""
        b, h, w, c = x.shape
        g = self.num_groups
        xf = x.astype(jnp.float32).reshape(b, h, w, g, c // g)
        if mask is None:
            mean = jnp.mean(xf, axis=(1, 2, 4), keepdims=True)
            var = jnp.mean(jnp.square(xf - mean), axis=(1, 2, 4), keepdims=True)
        else:
            m = mask.astype(jnp.float32)[..., None]  # [B, H, W, 1, 1]
            count = jnp.maximum(jnp.sum(m, axis=(1, 2), keepdims=True) * (c // g), 1.0)
            mean = jnp.sum(xf * m, axis=(1, 2, 4), keepdims=True) / count
            var = jnp.sum(jnp.square(xf - mean) * m, axis=(1, 2, 4), keepdims=True) / count
        y = ((xf - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(b, h, w, c)
        y = y * self.scale[...] + self.bias[...]
        return y.astype(self.dtype or x.dtype)


# --- PyTorch-default layers ---------------------------------------------------------


def torch_linear(in_features: int, out_features: int, *, dtype: Optional[Dtype], rngs: nnx.Rngs,
                 **kw) -> nnx.Linear:
    """``nn.Linear(in, out)`` with PyTorch's default init (kaiming-uniform a=√5, bias
    U(±1/√fan_in)); ``kw`` overrides the initialisers (e.g. ``bias_init``)."""
    init = dict(kernel_init=kaiming_uniform(math.sqrt(5.0)), bias_init=torch_default_bias(in_features))
    init.update(kw)
    return nnx.Linear(in_features, out_features, dtype=dtype, rngs=rngs, **init)


def torch_default_conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    stride: int = 1,
    *,
    dtype: Optional[Dtype],
    rngs: nnx.Rngs,
) -> Conv2d:
    """A ``Conv2d`` with PyTorch's default init (the author's TPN layers set no init)."""
    fan_in = in_features * kernel_size * kernel_size
    return Conv2d(
        in_features, out_features, kernel_size, stride,
        kernel_init=kaiming_uniform(math.sqrt(5.0)), bias_init=torch_default_bias(fan_in),
        dtype=dtype, rngs=rngs,
    )


def group_norm(num_features: int, num_groups: int, *, dtype: Optional[Dtype], rngs: nnx.Rngs) -> GroupNorm:
    """``torch.nn.GroupNorm(num_groups, num_features)`` on NHWC (stats over H, W and the group)."""
    return GroupNorm(num_features, num_groups, epsilon=GROUP_NORM_EPS, dtype=dtype, rngs=rngs)


class TwoLayerMLP(nnx.Module):
    """``Linear(in, hidden) → ReLU → Linear(hidden, out)`` on ``[..., in]`` (PyTorch-default init)."""

    def __init__(self, in_features: int, hidden: int, out_features: int, *, dtype=None, rngs: nnx.Rngs):
        self.hidden = torch_linear(in_features, hidden, dtype=dtype, rngs=rngs)
        self.out = torch_linear(hidden, out_features, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.out(jax.nn.relu(self.hidden(x)))


# --- the pre-activation bottleneck (thesis section 3.3.2) ---------------------------
#
# Thesis figure 3.3: the base self-processing layer of TPN is the ResNet bottleneck in its
# pre-activation form (He et al., "Identity mappings", thesis ref. [26]): a skip connection
# around a residual branch of three convolutions 1×1 (D→H), 3×3 (H→H), 1×1 (H→D), *each
# preceded by* GroupNorm(8) and ReLU. D = 256 feature size, H = 64 hidden size (section
# 3.4.1). TPN's bottom-up operation (figure 3.4, right) reuses the residual branch with
# the 3×3 convolution at stride 2; FQDet's selector (section 4.4.1) uses one bottleneck.
#
# Initialisation as the author's code (DetSeg ``models/cores/gc.py``): PyTorch's default
# ``Conv2d`` init (kaiming_uniform a=√5, bias U(±1/√fan_in)); no zero-init anywhere;
# GroupNorm eps 1e-5, scale 1, shift 0.
#
# NHWC in and out. Calls take the map's ``stride`` and optional ``image_sizes [B, 2]``
# (h, w inside the padding): GroupNorm statistics and 3×3 convolutions then see each
# image's valid cells only (:mod:`msvision.ops.padding`).


class PreActConv(nnx.Module):
    """GroupNorm → ReLU → Conv (the pink convolution node of thesis figures 3.3–3.4).

    ``x: [B, H, W, in_features]`` → ``[B, H', W', out_features]`` with
    ``H' = ceil(H / stride)`` (symmetric padding ``kernel_size // 2``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        stride: int = 1,
        *,
        num_groups: int = 8,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        self.stride = stride
        self.norm = group_norm(in_features, num_groups, dtype=dtype, rngs=rngs)
        self.conv = torch_default_conv(in_features, out_features, kernel_size, stride, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        """``x`` of stride ``stride`` (relative to the input image)."""
        mask = padding_mask(image_sizes, x.shape[1:3], stride)
        return self.conv(jax.nn.relu(self.norm(x, mask)), mask)


class BottleneckBranch(nnx.Module):
    """Residual branch of the bottleneck: 1×1 (D→H), 3×3 at ``stride`` (H→H), 1×1 (H→D).

    ``stride=1`` is the self-processing branch (figure 3.3), ``stride=2`` the TPN
    bottom-up branch (figure 3.4): ``[B, H, W, D]`` → ``[B, ceil(H/2), ceil(W/2), D]``.
    """

    def __init__(
        self,
        channels: int = 256,
        hidden_channels: int = 64,
        *,
        stride: int = 1,
        num_groups: int = 8,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        kw = dict(num_groups=num_groups, dtype=dtype, rngs=rngs)
        self.stride = stride
        self.reduce = PreActConv(channels, hidden_channels, 1, **kw)
        self.process = PreActConv(hidden_channels, hidden_channels, 3, stride, **kw)
        self.expand = PreActConv(hidden_channels, channels, 1, **kw)

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        """``x`` of stride ``stride``; the output has stride ``stride · self.stride``."""
        h = self.process(self.reduce(x, image_sizes, stride), image_sizes, stride)
        return self.expand(h, image_sizes, stride * self.stride)


class Bottleneck(nnx.Module):
    """Pre-activation bottleneck layer ``x + branch(x)`` (thesis figure 3.3).

    ``x: [B, H, W, D]`` → ``[B, H, W, D]``. The skip connection is computation free.
    """

    def __init__(
        self,
        channels: int = 256,
        hidden_channels: int = 64,
        *,
        num_groups: int = 8,
        dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        self.branch = BottleneckBranch(
            channels, hidden_channels, stride=1, num_groups=num_groups, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        return x + self.branch(x, image_sizes, stride).astype(x.dtype)


# --- helpers ------------------------------------------------------------------------


def rematerialized_scan(layers: Sequence[nnx.Module], apply: Callable[[nnx.Module, Any], Any], carry: Any) -> Any:
    """``carry = apply(layer, carry)`` for each of ``layers`` in order, as one ``lax.scan``
    whose body runs under ``jax.checkpoint``: only each layer's input ``carry`` is kept
    for the backward pass, the rest is recomputed there.

    The layers must be structurally identical (same graph, attributes and weight
    shapes); their weights are stacked inside the traced function (a copy of the
    weights, the parameter tree is unchanged) and the scan body is traced once
    instead of once per layer. Same outputs and gradients as the Python loop. The
    layers must not update their variables (no batch statistics).
    """
    layers = list(layers)
    if not layers:
        return carry
    graphdef = nnx.graphdef(layers[0])
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(layer) for layer in layers])

    def step(carry, layer_state):
        return apply(nnx.merge(graphdef, layer_state), carry), None

    carry, _ = jax.lax.scan(jax.checkpoint(step), carry, stacked)
    return carry


def halving_widths(channels: int, num_stages: int, min_channels: int = 1) -> tuple[int, ...]:
    """Feature sizes ``(F_0, …, F_num_stages)`` of a coarse-to-fine mask head: halved at every
    stage (thesis 5.3.3, "as done in RefineMask"), but never below ``min_channels``
    (a scaled-down head keeps its finest stages at least that wide).

    Raises:
      ValueError: a halving would not be exact or would reach 0 channels.
    """
    widths = [int(channels)]
    for _ in range(num_stages):
        f = widths[-1]
        if f // 2 >= min_channels:
            if f % 2 or f < 2:
                raise ValueError(f"{channels} channels cannot be halved {num_stages} times")
            widths.append(f // 2)
        else:
            widths.append(min(f, int(min_channels)))
    return tuple(widths)


def max_pool_3x3_s2(x: Array) -> Array:
    """torch ``MaxPool2d(3, stride=2, padding=1)`` on NHWC (padding never wins)."""
    # A Python -inf (not an array) lets JAX recognise max pooling and differentiate it.
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


def count_variables(tree, variable_type: type = nnx.Param, exclude: tuple = ()) -> int:
    """Number of scalars in the variables of ``variable_type`` (not of ``exclude``)
    in a module or state; works on abstract (``nnx.eval_shape``) modules."""
    state = nnx.state(tree, variable_type) if isinstance(tree, nnx.Module) else tree
    total = 0
    for _, var in nnx.to_flat_state(state):
        if isinstance(var, variable_type) and not isinstance(var, exclude):
            total += int(math.prod(var.shape))
    return total
