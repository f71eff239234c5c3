"""DefEncoder neck (Deformable DETR encoder, DINO settings; thesis 4.5.1): shapes,
parameter count, padding handling, a torch transcription of the mmdet encoder as
oracle, and XLA vs Pallas (interpret) MSDA."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.build import build_part
from msvision.models.layers import count_variables
from msvision.models.necks.defenc import DefEncoder, encoder_reference_points, valid_ratios
from msvision.ops.padding import padding_mask
from msvision.models.abstract import abstract_init

D, HEADS, POINTS, FFN = 32, 4, 2, 64
IN_P3 = {3: 8, 4: 16, 5: 24}
IN_P2 = {2: 8, 3: 8, 4: 16, 5: 24}
IMAGE = (75, 61)
SIZES = ((75, 61), (50, 40))  # valid (h, w) of the two images inside the padded batch


def _features(in_channels, size=IMAGE, batch=2, seed=0):
    h, w = size
    keys = jax.random.split(jax.random.key(seed), len(in_channels))
    return {l: jax.random.normal(k, (batch, -(-h // 2**l), -(-w // 2**l), c))
            for k, (l, c) in zip(keys, sorted(in_channels.items()))}


def _image_sizes(sizes=SIZES):
    return jnp.asarray(sizes, jnp.int32)


def _tiny(in_channels=IN_P3, out_levels=(3, 4, 5, 6, 7), impl="xla", layers=2, seed=0, remat=False):
    model = DefEncoder(in_channels, out_levels=out_levels, channels=D, num_layers=layers, num_heads=HEADS,
                       num_points=POINTS, ffn_dim=FFN, msda_impl=impl, remat=remat, rngs=nnx.Rngs(seed))
    # non-trivial sampling offsets / attention weights (init makes them query-independent)
    for i, layer in enumerate(model.layers):
        for j, lin in enumerate((layer.self_attn.sampling_offsets, layer.self_attn.attention_weights)):
            lin.kernel[...] = 0.3 * jax.random.normal(jax.random.key(100 + 10 * i + j), lin.kernel.shape)
    return model


def test_full_size_parameter_counts():
    """ChannelMapper (bias-free convs + GN) 6 228 480; per layer MSDA 254 944 + 2 LN
    1 024 + FFN 1 050 880; level embedding 5 × 256 (P3) / 6 × 256 (P2)."""
    inc = {2: 256, 3: 512, 4: 1024, 5: 2048}
    p3 = abstract_init(lambda: build_part("neck", dict(name="defenc"), in_channels={l: inc[l] for l in (3, 4, 5)},
                                           rngs=nnx.Rngs(0)))
    assert count_variables(p3) == 6_228_480 + 6 * (254_944 + 1_024 + 1_050_880) + 5 * 256 == 14_070_848
    p2 = abstract_init(lambda: build_part("neck", dict(name="defenc", out_levels=(2, 3, 4, 5, 6, 7)),
                                           in_channels=inc, rngs=nnx.Rngs(0)))
    msda_p2 = 2 * 65_792 + (256 * 384 + 384) + (256 * 192 + 192)
    assert count_variables(p2) == 6_228_480 + 65_536 + 512 + 6 * (msda_p2 + 1_024 + 1_050_880) + 6 * 256
    assert len(p3.layers) == 6 and p3.layers[0].ffn_in.kernel.shape == (256, 2048)


def test_p2_shapes_odd_size():
    """DefEnc-P2 on an odd-sized padded batch (P3–P7 and the unmasked path: oracle test)."""
    in_channels, out_levels, size = IN_P2, (2, 3, 4, 5, 6, 7), (75, 61)
    model = _tiny(in_channels, out_levels, layers=1)
    graphdef, state = nnx.split(model)
    apply = jax.jit(lambda s, f, m: nnx.merge(graphdef, s)(f, m))
    out = apply(state, _features(in_channels, size), _image_sizes())
    h, w = size
    for level in out_levels:
        hl, wl = h, w
        for _ in range(level):
            hl, wl = -(-hl // 2), -(-wl // 2)
        assert out[level].shape == (2, hl, wl, D)
        assert bool(jnp.all(jnp.isfinite(out[level])))


def test_reference_points_are_pixel_centres():
    shapes = ((4, 6), (2, 3))
    ref = encoder_reference_points(shapes, jnp.ones((1, 2, 2)))
    assert ref.shape == (1, 4 * 6 + 2 * 3, 2, 2)
    np.testing.assert_allclose(ref[0, 0, 0], [0.5 / 6, 0.5 / 4])
    np.testing.assert_allclose(ref[0, 4 * 6 - 1, 1], [5.5 / 6, 3.5 / 4])
    # with padding: normalised by the valid size, then scaled by each level's ratio
    valid = jnp.zeros((1, 4, 6), bool).at[:, :2, :3].set(True)
    r = valid_ratios(valid)
    np.testing.assert_allclose(r, [[0.5, 0.5]])
    ref = encoder_reference_points(((4, 6),), r[:, None])
    np.testing.assert_allclose(ref[0, 2 * 6 + 2, 0], [2.5 / 6, 2.5 / 4])  # pixel (2, 2): same as unpadded


def test_padded_positions_do_not_influence_valid_outputs():
    """Values at padded positions are zeroed before sampling and every other op is
    per position, so the encoder's valid outputs ignore what the padding contains."""
    model = _tiny(layers=1)
    feats = _features(IN_P3)
    sizes = _image_sizes()
    pyramid = model.input_proj(feats, sizes)
    noisy = {}
    for level, x in pyramid.items():
        valid = padding_mask(sizes, x.shape[1:3], 2**level)
        noisy[level] = jnp.where(valid, x, 100.0 * jax.random.normal(jax.random.key(level), x.shape))
    graphdef, state = nnx.split(model)
    encode = jax.jit(lambda p: nnx.merge(graphdef, state).encode(p, sizes))
    a, b = encode(pyramid), encode(noisy)
    for level in a:
        valid = padding_mask(sizes, a[level].shape[1:3], 2**level)
        np.testing.assert_allclose(jnp.where(valid, a[level], 0), jnp.where(valid, b[level], 0), atol=1e-4)


def _torch_encoder(model, feats, pixel_mask):
    """mmdet ChannelMapper + DeformableDETR encoder (as DetSeg's DeformEncoder calls it),
    in float64 (a build-independent oracle)."""
    import torch
    import torch.nn.functional as F

    torch.set_default_dtype(torch.float64)

    def t(a):
        a = np.array(a)
        return torch.from_numpy(a.astype(np.float64) if a.dtype.kind == "f" else a)

    def lin(m, x):
        return x @ t(m.kernel[...]) + t(m.bias[...])

    def group_norm(x, groups, norm):  # F.group_norm, also on 1×1 maps with one channel per group
        b, c = x.shape[:2]
        g = x.reshape(b, groups, -1)
        g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)
        return g.reshape(x.shape) * t(norm.scale[...])[:, None, None] + t(norm.bias[...])[:, None, None]

    # ChannelMapper
    cm = model.input_proj
    srcs = []
    for level, conv, norm in zip(cm.lateral_levels, cm.lateral_convs, cm.lateral_norms):
        x = F.conv2d(t(feats[level]).permute(0, 3, 1, 2), t(conv.kernel[...]).permute(3, 2, 0, 1))
        srcs.append(group_norm(x, 32, norm))
    x = t(feats[cm.in_levels[-1]]).permute(0, 3, 1, 2)
    for conv, norm in zip(cm.extra_convs, cm.extra_norms):
        x = group_norm(F.conv2d(x, t(conv.kernel[...]).permute(3, 2, 0, 1), stride=2, padding=1), 32, norm)
        srcs.append(x)

    # DeformEncoder.forward
    bs = srcs[0].shape[0]
    base_pad = (~t(pixel_mask)).float()
    feats_l, embeds_l, masks_l, shapes, ratios = [], [], [], [], []
    for i, src in enumerate(srcs):
        hw = tuple(src.shape[2:])
        pad = F.interpolate(base_pad[None], size=hw)[0].bool()
        not_mask = (~pad).float()
        y_e, x_e = not_mask.cumsum(1), not_mask.cumsum(2)
        y_e = y_e / (y_e[:, -1:, :] + 1e-6) * 2 * math.pi
        x_e = x_e / (x_e[:, :, -1:] + 1e-6) * 2 * math.pi
        nf = D // 2
        dim_t = torch.arange(nf, dtype=torch.float64)
        dim_t = 20 ** (2 * (dim_t // 2) / nf)
        px, py = x_e[..., None] / dim_t, y_e[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        pos = torch.cat((py, px), dim=3).flatten(1, 2)
        feats_l.append(src.flatten(2).transpose(1, 2))
        embeds_l.append(pos + t(model.level_embed[...])[i])
        masks_l.append(pad.flatten(1))
        shapes.append(hw)
        vh = torch.sum(~pad[:, :, 0], 1).float() / hw[0]
        vw = torch.sum(~pad[:, 0, :], 1).float() / hw[1]
        ratios.append(torch.stack([vw, vh], -1))
    query, query_pos, key_pad = torch.cat(feats_l, 1), torch.cat(embeds_l, 1), torch.cat(masks_l, 1)
    valid_r = torch.stack(ratios, 1)
    refs = []
    for lvl, (h, w) in enumerate(shapes):
        ry, rx = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w), indexing="ij")
        refs.append(torch.stack((rx.reshape(-1)[None] / (valid_r[:, None, lvl, 0] * w),
                                 ry.reshape(-1)[None] / (valid_r[:, None, lvl, 1] * h)), -1))
    ref = torch.cat(refs, 1)[:, :, None] * valid_r[:, None]
    L, M, P = len(shapes), HEADS, POINTS
    normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
    for layer in model.layers:
        sa = layer.self_attn
        q = query + query_pos
        value = lin(sa.value_proj, query).masked_fill(key_pad[..., None], 0.0).view(bs, -1, M, D // M)
        nq = q.shape[1]
        off = lin(sa.sampling_offsets, q).view(bs, nq, M, L, P, 2)
        aw = lin(sa.attention_weights, q).view(bs, nq, M, L * P).softmax(-1).view(bs, nq, M, L, P)
        loc = ref[:, :, None, :, None, :] + off / normalizer[None, None, None, :, None, :]
        # ms_deform_attn_core_pytorch
        values = value.split([h * w for h, w in shapes], dim=1)
        grids = 2 * loc - 1
        samples = []
        for lvl, (h, w) in enumerate(shapes):
            v = values[lvl].flatten(2).transpose(1, 2).reshape(bs * M, D // M, h, w)
            g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
            samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
        a = aw.transpose(1, 2).reshape(bs * M, 1, nq, L * P)
        attn = (torch.stack(samples, dim=-2).flatten(-2) * a).sum(-1).view(bs, D, nq).transpose(1, 2)
        query = F.layer_norm(query + lin(sa.output_proj, attn), (D,), t(layer.norm1.scale[...]),
                             t(layer.norm1.bias[...]), eps=1e-5)
        ffn = lin(layer.ffn_out, F.relu(lin(layer.ffn_in, query)))
        query = F.layer_norm(query + ffn, (D,), t(layer.norm2.scale[...]), t(layer.norm2.bias[...]), eps=1e-5)
    outs, start = [], 0
    for h, w in shapes:
        outs.append(query[:, start:start + h * w].reshape(bs, h, w, D).numpy())
        start += h * w
    torch.set_default_dtype(torch.float32)
    return outs


@pytest.mark.oracle
def test_matches_torch_mmdet_transcription():
    """DefEnc-P3 on a padded batch against the torch transcription run on each image
    alone (cropped to its valid cells, no padding: what the thesis evaluates); without
    image sizes the neck must equal the all-valid case."""
    model = _tiny(layers=1)
    graphdef, state = nnx.split(model)
    apply = jax.jit(lambda f, m: nnx.merge(graphdef, state)(f, m))
    feats = _features(IN_P3)
    ours = apply(feats, _image_sizes())
    for b, (h, w) in enumerate(SIZES):
        crop = {l: f[b:b + 1, :-(-h // 2**l), :-(-w // 2**l)] for l, f in feats.items()}
        ref = _torch_encoder(model, crop, np.ones((1, h, w), bool))
        for level, r in zip(model.out_levels, ref):
            got = np.asarray(ours[level][b:b + 1, :r.shape[1], :r.shape[2]], np.float64)
            # float32 against float64 through one encoder layer: measured ~1e-6 of the scale
            assert np.abs(got - r).max() <= 2e-5 * np.abs(r).max(), (b, level, np.abs(got - r).max())
    all_valid = apply(feats, jnp.asarray([IMAGE, IMAGE], jnp.int32))
    unmasked = jax.jit(lambda f: nnx.merge(graphdef, state)(f))(feats)
    for level in unmasked:
        np.testing.assert_allclose(np.asarray(unmasked[level]), np.asarray(all_valid[level]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # the kernels themselves are compared in tests/ops/test_msda_pallas.py
def test_xla_and_pallas_interpret_msda_agree():
    feats = _features(IN_P3, size=(24, 20))
    sizes = _image_sizes(((24, 20), (17, 12)))
    outs = []
    for impl in ("xla", "triton_interpret"):
        model = _tiny(impl=impl, layers=1, seed=3)
        outs.append(model(feats, sizes))
    for level in outs[0]:
        np.testing.assert_allclose(np.asarray(outs[0][level]), np.asarray(outs[1][level]), rtol=1e-4, atol=1e-4)


def _loss_and_grad(model, feats, mask):
    graphdef, params = nnx.split(model)

    def loss(params, feats):
        out = nnx.merge(graphdef, params)(feats, mask)
        return sum(jnp.sum(jnp.sin(v)) for v in out.values())  # a non-trivial cotangent

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), params


@pytest.mark.slow  # two compiled train steps of a DefEncoder: ~25 s
def test_remat_matches_unrolled_layers_and_saves_memory():
    """remat=True (scan over the stacked layers under jax.checkpoint) computes the same
    outputs and gradients, for the weights of every layer and for the input features,
    and XLA plans fewer temporary bytes for the backward pass."""
    feats = _features(IN_P2, size=(96, 80))
    mask = _image_sizes(((96, 80), (70, 51)))
    results, temp_bytes = [], []
    for remat in (False, True):
        fn, params = _loss_and_grad(_tiny(IN_P2, (2, 3, 4, 5, 6, 7), layers=3, seed=5, remat=remat), feats, mask)
        temp_bytes.append(fn.lower(params, feats).compile().memory_analysis().temp_size_in_bytes)
        results.append(fn(params, feats))
    (loss0, (grad_params0, grad_feats0)), (loss1, (grad_params1, grad_feats1)) = results
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-5)
    flat0, flat1 = nnx.to_flat_state(grad_params0), nnx.to_flat_state(grad_params1)
    assert [k for k, _ in flat0] == [k for k, _ in flat1]
    assert any("layers" in map(str, k) for k, _ in flat0)
    for (path, g0), (_, g1) in zip(flat0, flat1):
        np.testing.assert_allclose(np.asarray(g1.value), np.asarray(g0.value), rtol=2e-4, atol=2e-5, err_msg=str(path))
    for level in grad_feats0:
        np.testing.assert_allclose(np.asarray(grad_feats1[level]), np.asarray(grad_feats0[level]), rtol=2e-4, atol=2e-5)
    assert temp_bytes[1] < 0.7 * temp_bytes[0], temp_bytes
