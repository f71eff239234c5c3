"""Networks of the FQDet / FQDetV2 heads (thesis section 4.3.3, figure 4.1).

Layouts: feature maps NHWC; queries ``[B, Q, D]``. Modules follow the author's
DetSeg modules (``models/modules/mlp.py``, ``selector.py``, ``container.py``,
``attention.py``) so that parameter counts and initialisation match the released code:

- :class:`OneStepMLP`: ``[LN] → [ReLU] → Linear`` with an optional skip (DetSeg
  ``OneStepMLP``).
- :class:`Selector`: stage-1 selector network, ``ProjConv(GN, 1×1)`` → one
  pre-activation bottleneck → ``ReLU → 1×1 conv`` to one logit per anchor type
  (DetSeg ``AnchorSelector`` with ``ProjConv``/``BottleneckConv``).
- :class:`TransitionNetworks`: one ``LN → ReLU → Linear`` network per anchor type
  (DetSeg ``ModuleSelector`` of ``OneStepMLP``\\ s).
- :class:`BoxEncoder`: ``Linear(4→D)`` → ``OneStepMLP(LN, ReLU, skip)`` on the
  normalised ``cxcywh`` box prior (FQDet only; the released FQDetV2 has none).
- :class:`DecoderLayer`: pre-LN residual MSDA cross-attention (box-prior frame),
  multi-head self-attention and FFN.
- :func:`make_cls_net`, :func:`make_box_net`, :func:`make_box_score_net`: the prediction
  networks of FQDet ('mlp') and FQDetV2 ('linear' classification, 'linear_norm_mlp' box and
  box-score networks).

Linear layers use PyTorch's default ``nn.Linear`` init (kaiming-uniform a=√5,
bias U(±1/√fan_in)), as the author's modules set no init of their own.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msvision.models.attention.msda import MultiScaleDeformableAttention
from msvision.models.layers import (Bottleneck, PreActConv, kaiming_uniform, torch_default_bias, torch_default_conv,
                                    torch_linear)

Array = jax.Array
Dtype = Any

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default

CLS_NETS = ("mlp", "linear")  # prediction.cls_net: FQDet's, FQDetV2's (table 4.13)
BOX_NETS = ("mlp", "linear_norm_mlp")  # prediction.box_net: FQDet's, FQDetV2's (table 4.15)


def layer_norm(features: int, *, dtype: Optional[Dtype], rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, epsilon=LAYER_NORM_EPS, dtype=dtype, rngs=rngs)


class OneStepMLP(nnx.Module):
    """``y = [x +] Linear(act(norm(x)))`` (DetSeg ``OneStepMLP``), ``[..., in] → [..., out]``."""

    def __init__(
        self, in_features: int, out_features: int, *, norm: bool = True, relu: bool = True,
        skip: bool = False, dtype: Optional[Dtype] = None, rngs: nnx.Rngs,
    ):
        if skip and in_features != out_features:
            raise ValueError("a skip connection needs in_features == out_features")
        self.norm = layer_norm(in_features, dtype=dtype, rngs=rngs) if norm else None
        self.relu = relu
        self.skip = skip
        self.linear = torch_linear(in_features, out_features, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        h = self.norm(x) if self.norm is not None else x
        h = jax.nn.relu(h) if self.relu else h
        h = self.linear(h)
        return x + h.astype(x.dtype) if self.skip else h


class Sequential(nnx.Module):
    """Applies its layers in order (``nnx.List`` of modules or ``'relu'``)."""

    def __init__(self, layers: Sequence[Any]):
        self.layers = nnx.List([l for l in layers if not isinstance(l, str)])
        self.plan = tuple("relu" if isinstance(l, str) else "module" for l in layers)

    def __call__(self, x: Array) -> Array:
        modules = iter(self.layers)
        for step in self.plan:
            x = jax.nn.relu(x) if step == "relu" else next(modules)(x)
        return x


# --- stage 1 ------------------------------------------------------------------------


class Selector(nnx.Module):
    """Stage-1 selector network, shared over pyramid levels (thesis 4.4.1).

    ``ProjConv(D→D, 1×1, GN)`` (GN → ReLU → conv, no skip), one pre-activation
    bottleneck (D→H→H→D, GN(8), skip; the TPN bottleneck of section 3.4.1), then
    ``ProjConv(D→A, 1×1, no norm)`` (ReLU → conv) with bias ``-log((1-π)/π)``.

    ``x: [B, H, W, D]`` → ``[B, H, W, A]`` logits (float32).
    """

    def __init__(
        self, channels: int, num_anchor_types: int, *, hidden_channels: int = 64, num_groups: int = 8,
        prior_prob: float = 0.01, dtype: Optional[Dtype] = None, rngs: nnx.Rngs,
    ):
        self.proj = PreActConv(channels, channels, 1, num_groups=num_groups, dtype=dtype, rngs=rngs)
        self.bottleneck = Bottleneck(channels, hidden_channels, num_groups=num_groups, dtype=dtype, rngs=rngs)
        self.logits = torch_default_conv(channels, num_anchor_types, 1, dtype=dtype, rngs=rngs)
        # float32, not a weak type: a weakly typed parameter would make jit recompile after the first update.
        self.logits.bias[...] = jnp.full((num_anchor_types,), -math.log((1 - prior_prob) / prior_prob), jnp.float32)

    def __call__(self, x: Array, image_sizes: Optional[Array] = None, stride: int = 1) -> Array:
        """``x`` of stride ``stride``; ``image_sizes [B, 2]`` makes the GroupNorms and the
        bottleneck's 3×3 convolution padding-aware."""
        x = self.bottleneck(self.proj(x, image_sizes, stride), image_sizes, stride)
        return self.logits(jax.nn.relu(x)).astype(jnp.float32)


# --- stage 2 ------------------------------------------------------------------------


class TransitionNetworks(nnx.Module):
    """One ``LN → ReLU → Linear(D_in→D)`` network per anchor type (thesis 4.4.1).

    Parameters are stacked over the ``A`` anchor types. Each query is routed to the
    network of its anchor type by a one-hot contraction (static shapes; ``Q·A·D²``
    multiply-adds instead of ``Q·D²``, negligible next to the decoder).

    ``x: [B, Q, D_in]``, ``types: [B, Q] int`` → ``[B, Q, D]``.
    """

    def __init__(
        self, num_types: int, in_features: int, out_features: int, *, dtype: Optional[Dtype] = None,
        rngs: nnx.Rngs,
    ):
        self.num_types = num_types
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((num_types, in_features), jnp.float32))
        self.shift = nnx.Param(jnp.zeros((num_types, in_features), jnp.float32))
        kernel_init = kaiming_uniform(math.sqrt(5.0))
        keys = jax.random.split(rngs.params(), num_types)
        self.kernel = nnx.Param(
            jnp.stack([kernel_init(k, (in_features, out_features), jnp.float32) for k in keys])
        )
        bias_init = torch_default_bias(in_features)
        self.bias = nnx.Param(bias_init(rngs.params(), (num_types, out_features), jnp.float32))

    def __call__(self, x: Array, types: Array) -> Array:
        dtype = self.dtype or x.dtype
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
        h = (xf - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)
        h = h * self.scale[...][types] + self.shift[...][types]
        h = jax.nn.relu(h).astype(dtype)
        onehot = jax.nn.one_hot(types, self.num_types, dtype=dtype)
        y = jnp.einsum("bqa,bqd,ade->bqe", onehot, h, self.kernel[...].astype(dtype))
        return y + self.bias[...][types].astype(dtype)


class BoxEncoder(nnx.Module):
    """``Linear(4→D)`` → ``OneStepMLP(D, LN, ReLU, skip)`` (DetSeg ``box_encoder_cfg``).

    ``boxes: [..., 4]`` normalised ``(cx, cy, w, h)`` → ``[..., D]``.
    """

    def __init__(self, features: int, *, dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        self.linear = torch_linear(4, features, dtype=dtype, rngs=rngs)
        self.mlp = OneStepMLP(features, features, skip=True, dtype=dtype, rngs=rngs)

    def __call__(self, boxes: Array) -> Array:
        return self.mlp(self.linear(boxes))


class SelfAttention(nnx.Module):
    """Multi-head self-attention among the queries of one image (``nn.MultiheadAttention``).

    Query/key inputs may carry an additive encoding (``qk_encoding``) that the values
    do not see (DETR's positional-encoding convention). Init as torch: xavier-uniform
    over the stacked ``[3D, D]`` input projection, zero biases, default output init
    with zero bias.
    """

    def __init__(self, features: int, num_heads: int = 8, *, dtype: Optional[Dtype] = None, rngs: nnx.Rngs):
        if features % num_heads:
            raise ValueError(f"features {features} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        bound = math.sqrt(6.0 / (features + 3 * features))
        in_init = nnx.initializers.uniform(2 * bound)
        shifted = lambda key, shape, dtype=jnp.float32: in_init(key, shape, dtype) - bound  # U(-b, b)
        kw = dict(kernel_init=shifted, bias_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)
        self.query = nnx.Linear(features, features, **kw)
        self.key = nnx.Linear(features, features, **kw)
        self.value = nnx.Linear(features, features, **kw)
        self.out = torch_linear(features, features, dtype=dtype, rngs=rngs, bias_init=nnx.initializers.zeros)

    def __call__(self, x: Array, qk_encoding: Optional[Array] = None) -> Array:
        b, q, d = x.shape
        h = self.num_heads
        qk_in = x if qk_encoding is None else x + qk_encoding.astype(x.dtype)
        split = lambda t: t.reshape(b, q, h, d // h)
        queries, keys, values = split(self.query(qk_in)), split(self.key(qk_in)), split(self.value(x))
        logits = jnp.einsum("bqhc,bkhc->bhqk", queries, keys).astype(jnp.float32) / math.sqrt(d // h)
        weights = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
        out = jnp.einsum("bhqk,bkhc->bqhc", weights, values).reshape(b, q, d)
        return self.out(out)


class DecoderLayer(nnx.Module):
    """One FQDet decoder layer: three pre-LayerNorm residual branches (thesis 4.4.1).

    1. ``q += MSDA(LN(q) [+ enc], pyramid, box prior)`` (box-prior sampling frame);
    2. ``q += MHA(LN(q) [+ enc for queries/keys])``;
    3. ``q += Linear(ReLU(Linear(LN(q))))`` (FFN, no dropout).
    """

    def __init__(
        self, features: int, *, num_levels: int, num_heads: int = 8, num_points: int = 4,
        self_attn_heads: int = 8, ffn_dim: int = 1024, msda_impl: str = "auto",
        dtype: Optional[Dtype] = None, rngs: nnx.Rngs,
    ):
        self.cross_norm = layer_norm(features, dtype=dtype, rngs=rngs)
        self.cross_attn = MultiScaleDeformableAttention(
            features, num_heads, num_levels, num_points, reference_mode="boxes", dtype=dtype, impl=msda_impl,
            rngs=rngs,
        )
        self.self_norm = layer_norm(features, dtype=dtype, rngs=rngs)
        self.self_attn = SelfAttention(features, self_attn_heads, dtype=dtype, rngs=rngs)
        self.ffn_norm = layer_norm(features, dtype=dtype, rngs=rngs)
        self.ffn_in = torch_linear(features, ffn_dim, dtype=dtype, rngs=rngs)
        self.ffn_out = torch_linear(ffn_dim, features, dtype=dtype, rngs=rngs)

    def __call__(
        self, q: Array, value: Array, spatial_shapes: Sequence[tuple[int, int]], reference: Array,
        cross_encoding: Optional[Array] = None, self_encoding: Optional[Array] = None,
    ) -> Array:
        """``q: [B, Q, D]``, ``value: [B, S, D]``, ``reference: [B, Q, L, 4]`` normalised cxcywh."""
        h = self.cross_norm(q)
        if cross_encoding is not None:
            h = h + cross_encoding.astype(h.dtype)
        q = q + self.cross_attn(h, value, spatial_shapes, reference).astype(q.dtype)
        q = q + self.self_attn(self.self_norm(q), self_encoding).astype(q.dtype)
        q = q + self.ffn_out(jax.nn.relu(self.ffn_in(self.ffn_norm(q)))).astype(q.dtype)
        return q


# --- prediction networks --------------------------------------------------------------


def _mlp(features: int, out: int, hidden_layers: int, *, dtype, rngs) -> Sequential:
    """'mlp', the base FQDet's prediction networks, with ``hidden_layers`` hidden layers.

    2 (the released FQDet config): ``OneStepMLP(LN, ReLU)`` → ``OneStepMLP(LN, ReLU,
    skip)`` → Linear. 1 (thesis 4.4.1, "an MLP with one hidden layer"):
    ``OneStepMLP(LN, ReLU)`` → ReLU → Linear.
    """
    if hidden_layers == 2:
        return Sequential([
            OneStepMLP(features, features, dtype=dtype, rngs=rngs),
            OneStepMLP(features, features, skip=True, dtype=dtype, rngs=rngs),
            torch_linear(features, out, dtype=dtype, rngs=rngs),
        ])
    if hidden_layers == 1:
        return Sequential([
            OneStepMLP(features, features, dtype=dtype, rngs=rngs), "relu",
            torch_linear(features, out, dtype=dtype, rngs=rngs),
        ])
    raise ValueError(f"prediction.mlp_hidden_layers must be 1 or 2, got {hidden_layers}")


def _linear_norm_mlp(features: int, out: int, *, dtype, rngs) -> Sequential:
    """'linear_norm_mlp', FQDetV2's box and box-score networks: Linear → LN → Linear → ReLU →
    Linear → ReLU → Linear.

    Exactly the released FQDetV2 head config's ``logits_cfg`` / ``box_score_cfg`` (two hidden
    layers; note the LayerNorm without activation after the first Linear).
    """
    lin = lambda o: torch_linear(features, o, dtype=dtype, rngs=rngs)  # noqa: E731
    return Sequential([
        lin(features), layer_norm(features, dtype=dtype, rngs=rngs), lin(features), "relu", lin(features), "relu",
        lin(out),
    ])


def make_cls_net(kind: str, features: int, num_outputs: int, *, mlp_hidden_layers: int = 1, dtype=None,
                 rngs: nnx.Rngs) -> nnx.Module:
    """Classification network (:data:`CLS_NETS`, table 4.13): 'mlp' (the base FQDet's, thesis
    4.4.1) or 'linear' (one linear layer, the thesis's FQDetV2 classification network)."""
    if kind == "mlp":
        return _mlp(features, num_outputs, mlp_hidden_layers, dtype=dtype, rngs=rngs)
    if kind == "linear":
        return torch_linear(features, num_outputs, dtype=dtype, rngs=rngs)
    raise ValueError(f"prediction.cls_net must be one of {CLS_NETS}, got {kind!r}")


def make_box_net(kind: str, features: int, *, mlp_hidden_layers: int = 1, dtype=None,
                 rngs: nnx.Rngs) -> nnx.Module:
    """Box network, 4 deltas (:data:`BOX_NETS`, table 4.15): 'mlp' (the base FQDet's, thesis
    4.4.1) or 'linear_norm_mlp' (the thesis's FQDetV2 box network)."""
    if kind == "mlp":
        return _mlp(features, 4, mlp_hidden_layers, dtype=dtype, rngs=rngs)
    if kind == "linear_norm_mlp":
        return _linear_norm_mlp(features, 4, dtype=dtype, rngs=rngs)
    raise ValueError(f"prediction.box_net must be one of {BOX_NETS}, got {kind!r}")


def make_box_score_net(features: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.Module:
    """Box-scoring network (one logit), 'linear_norm_mlp' as FQDetV2's box network (table 4.17)."""
    return _linear_norm_mlp(features, 1, dtype=dtype, rngs=rngs)


class PredictionHeads(nnx.Module):
    """Classification, box and optional box-score networks applied to the queries.

    ``q: [B, Q, D]`` → ``(cls_logits [B, Q, K+1], deltas [B, Q, 4], box_score_logits
    [B, Q] or None)``, all float32.
    """

    def __init__(
        self, features: int, num_cls_outputs: int, *, cls_net: str, box_net: str, box_scoring: bool,
        mlp_hidden_layers: int = 1, dtype=None, rngs: nnx.Rngs,
    ):
        kw = dict(mlp_hidden_layers=mlp_hidden_layers, dtype=dtype, rngs=rngs)
        self.cls = make_cls_net(cls_net, features, num_cls_outputs, **kw)
        self.box = make_box_net(box_net, features, **kw)
        self.box_score = make_box_score_net(features, dtype=dtype, rngs=rngs) if box_scoring else None

    def __call__(self, q: Array) -> tuple[Array, Array, Optional[Array]]:
        cls = self.cls(q).astype(jnp.float32)
        deltas = self.box(q).astype(jnp.float32)
        score = self.box_score(q).astype(jnp.float32)[..., 0] if self.box_score is not None else None
        return cls, deltas, score


class DuplicateNet(nnx.Module):
    """Learned duplicate removal sub-head (thesis 4.5.2, table 4.19).

    "An MLP with one hidden layer applied to each query individually, fusing query
    pairs using element-wise feature multiplication, followed by a linear layer
    obtaining the duplicate logits." ``q: [B, Q, D]`` → ``[B, Q, Q]`` logits.
    """

    def __init__(self, features: int, *, dtype=None, rngs: nnx.Rngs):
        self.mlp = Sequential([
            OneStepMLP(features, features, dtype=dtype, rngs=rngs),
            OneStepMLP(features, features, norm=False, dtype=dtype, rngs=rngs),
        ])
        self.logits = torch_linear(features, 1, dtype=dtype, rngs=rngs)

    def __call__(self, q: Array) -> Array:
        h = self.mlp(q).astype(jnp.float32)
        # Linear(h_i * h_j) = sum_d w_d h_id h_jd + b: no [Q, Q, D] tensor needed.
        w = self.logits.kernel[...][:, 0].astype(jnp.float32)
        return jnp.einsum("bid,d,bjd->bij", h, w, h) + self.logits.bias[...][0].astype(jnp.float32)
