"""Swin Transformer: torchvision equivalence, padding invariance, converter layouts, freezing, sizes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.backbones.convert_swin import load_swin, unfold_to_official_order
from msvision.models.backbones.pretrained import load_pretrained_backbone
from msvision.models.backbones.swin import SwinTransformer, drop_path
from msvision.models.backbones.swin_windows import region_mask, relative_position_index
from msvision.models.build import build_part
from msvision.models.layers import Frozen, count_variables

# Swin-T-like, reduced widths: embed 32, depths (2, 2, 2, 2), window 7.
TINY = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), window_size=7)


def tiny_swin(seed=0, **kw):
    """A tiny Swin with random weights drawn on the host (no per-initialiser compiles):
    weights ~ N(0, 1.5²/fan_in) (sharp attention), bias tables N(0, 1), norm scales
    1 + N(0, 0.3²), biases N(0, 0.2²)."""
    kw = {**TINY, "out_levels": (2, 3, 4, 5), **kw}
    return fill_random(nnx.eval_shape(lambda: SwinTransformer("T", **kw, rngs=nnx.Rngs(0))), seed)


def fill_random(abstract, seed=0):
    """An abstract (``nnx.eval_shape``) model with host-drawn random values (see :func:`tiny_swin`)."""
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def draw(path, var):
        name, shape = str(path[-1]), var.shape
        if name == "relative_position_bias_table":
            value = rng.normal(0.0, 1.0, shape)
        elif len(shape) >= 2:
            value = rng.normal(0.0, 1.5 / np.sqrt(np.prod(shape[:-1])), shape)
        elif name == "scale":
            value = 1.0 + rng.normal(0.0, 0.3, shape)
        else:
            value = rng.normal(0.0, 0.2, shape)
        return var.replace(jnp.asarray(value, np.float32))

    flat = [(path, draw(path, var)) for path, var in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def jitted(model):
    """``model(images, image_sizes, rng)`` as one jitted function of the model's state."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda st, x, sizes, rng: nnx.merge(graphdef, st)(x, sizes, rng))
    return lambda x, sizes=None, rng=None: fn(state, x, sizes, rng)


def torchvision_tiny(seed=0):
    """torchvision's Swin (v1) at the tiny widths, every parameter randomised so that
    attention is far from uniform and the bias tables and norms matter."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    tm = torchvision.models.SwinTransformer([4, 4], 32, [2, 2, 2, 2], [2, 4, 8, 16], [7, 7],
                                            stochastic_depth_prob=0.2).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.ndim >= 2:  # linear / conv weights ~ 1/sqrt(fan_in)
                p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5) * 1.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return tm


def torch_stage_outputs(tm, x):
    import torch

    out, y = {}, x
    with torch.no_grad():
        for i, f in enumerate(tm.features):
            y = f(y)
            if i % 2 == 1:  # features[2i+1]: the blocks of stage i (NHWC)
                out[i // 2 + 2] = y.numpy()
    return out


@pytest.mark.oracle
def test_matches_torchvision_every_stage():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    tm = torchvision_tiny().double()
    ours = tiny_swin()
    load_swin(ours, tm.state_dict())
    # H, W multiples of 4 (torchvision's patch embedding floors, ours pads) and padded
    # maps larger than one window at every stage (torchvision does not shift a map that
    # fits in one window, mmdet does): stage sizes 65×57, 33×29, 17×15, 9×8, so every
    # stage pads to the window and wraps the shifted windows.
    x = torch.randn(2, 3, 260, 228, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch_stage_outputs(tm, x)
    # the output norms (random here, not in torchvision's state dict) applied to torch's stage outputs
    norm_w = {l: np.asarray(ours.output_norm(l - 2).scale[...], np.float64) for l in ours.out_levels}
    norm_b = {l: np.asarray(ours.output_norm(l - 2).bias[...], np.float64) for l in ours.out_levels}
    graphdef, state = nnx.split(ours)

    def run(state, images):
        model = nnx.merge(graphdef, state)
        return model.stage_outputs(images), model(images)

    with jax.enable_x64(True):
        state = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), state)
        got, features = jax.jit(run)(state, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
        for level in range(2, 6):
            assert got[level].dtype == jnp.float64
            assert got[level].shape == expected[level].shape
            # float64 on both sides: agreement to ~1e-12 relative; 1e-9 leaves room
            np.testing.assert_allclose(np.asarray(got[level]), expected[level], rtol=1e-9, atol=1e-9)
            e = torch.from_numpy(expected[level])
            bias = torch.from_numpy(norm_b[level])
            normed = torch.nn.functional.layer_norm(e, e.shape[-1:], torch.from_numpy(norm_w[level]), bias, 1e-5)
            np.testing.assert_allclose(np.asarray(features[level]), normed.numpy(), rtol=1e-9, atol=1e-9)


def test_padding_invariance():
    """Each image alone vs. inside a padded batch with a larger image (one canvas for all
    cases). Stride 4: maps 25×19 and 9×15 in a 32×30 canvas, window-padded to 28×21 and
    14×21 vs. 35×35; stride 16: 7×5 and 3×4 (fits in one shifted window) in 8×8.
    Stages 1–3 suffice (stage 4 repeats stage 3's cases) and keep the compiles short."""
    model = tiny_swin(out_levels=(2, 3, 4))
    apply = jitted(model)
    canvas_hw = (128, 120)
    small = [(100, 76), (36, 60)]
    keys = jax.random.split(jax.random.key(1), len(small) + 1)
    images = [jax.random.normal(k, (1, h, w, 3)) for k, (h, w) in zip(keys, small)]
    # noise, not zeros, in the padding: the patch embedding must mask it out
    canvas = jax.random.normal(keys[-1], (len(small) + 1, *canvas_hw, 3))
    for i, ((h, w), image) in enumerate(zip(small, images)):
        canvas = canvas.at[i, :h, :w].set(image[0])
    sizes = jnp.array(small + [canvas_hw], jnp.int32)
    batch = apply(canvas, sizes)
    for i, ((h, w), image) in enumerate(zip(small, images)):
        alone = apply(image)
        for level in model.out_levels:
            vh, vw = -(-h // 2**level), -(-w // 2**level)
            assert alone[level].shape[1:3] == (vh, vw)
            assert batch[level].shape[1:3] == (-(-canvas_hw[0] // 2**level), -(-canvas_hw[1] // 2**level))
            scale = float(jnp.abs(alone[level]).max())
            # float32 through 8 blocks with sharp attention: ~1e-6 relative per block
            np.testing.assert_allclose(np.asarray(batch[level][i, :vh, :vw]), np.asarray(alone[level][0]),
                                       atol=2e-5 * scale, rtol=0, err_msg=f"image {(h, w)}, level {level}")


def test_region_mask_matches_torchvision_rule():
    """Shift regions by mmdet/torchvision's slices on a 14×21 map, window 7, shift 3."""
    mask = region_mask(14, 21, 7, 3)
    labels = np.zeros((14, 21), int)
    for a, hs in enumerate((slice(0, -7), slice(-7, -3), slice(-3, None))):
        for b, wsl in enumerate((slice(0, -7), slice(-7, -3), slice(-3, None))):
            labels[hs, wsl] = 3 * a + b
    windows = labels.reshape(2, 7, 3, 7).transpose(0, 2, 1, 3).reshape(6, 49)
    np.testing.assert_array_equal(mask, windows[:, :, None] == windows[:, None, :])


# --- converter ---------------------------------------------------------------------------


def official_layout(tv_state, window_size=7):
    """torchvision state dict → the official repository's layout, with its extra entries
    (relative_position_index and attn_mask buffers, final norm, classifier head)."""
    out = {}
    for key, value in tv_state.items():
        value = value.detach().numpy().copy()
        if key.startswith("features.0.0."):
            out[key.replace("features.0.0.", "patch_embed.proj.")] = value
        elif key.startswith("features.0.2."):
            out[key.replace("features.0.2.", "patch_embed.norm.")] = value
        elif m := re.match(r"features\.(\d+)\.(\d+)\.(.*)", key):
            stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
            rest = rest.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
            if rest.endswith("relative_position_index"):
                value = value.reshape(window_size**2, window_size**2)  # official: [N, N]
            out[f"layers.{(stage - 1) // 2}.blocks.{block}.{rest}"] = value
        elif m := re.match(r"features\.(\d+)\.(.*)", key):
            out[f"layers.{int(m.group(1)) // 2 - 1}.downsample.{m.group(2)}"] = value
        else:
            out[key] = value  # norm.*, head.*
    for i in range(4):  # the official blocks keep their shift masks as buffers
        out[f"layers.{i}.blocks.1.attn_mask"] = np.zeros((4, 49, 49), np.float32)
    return out


def mmdet_layout(official):
    """mmdet's ``swin_converter`` (mmdet/models/backbones/swin.py), re-implemented from its source."""
    def reduction_order(x):
        out_c, in_c = x.shape
        return x.reshape(out_c, 4, in_c // 4)[:, [0, 2, 1, 3], :].transpose(0, 2, 1).reshape(out_c, in_c)

    def norm_order(x):
        return x.reshape(4, x.shape[0] // 4)[[0, 2, 1, 3], :].transpose(1, 0).reshape(-1)

    new = {}
    for k, v in official.items():
        if k.startswith("head"):
            continue
        if k.startswith("layers"):
            new_v = v
            if "attn." in k:
                new_k = k.replace("attn.", "attn.w_msa.")
            elif "mlp." in k:
                new_k = k.replace("mlp.fc1.", "ffn.layers.0.0.").replace("mlp.fc2.", "ffn.layers.1.")
            elif "downsample" in k:
                new_k = k
                new_v = reduction_order(v) if "reduction." in k else norm_order(v)
            else:
                new_k = k
            new_k = new_k.replace("layers", "stages", 1)
        elif k.startswith("patch_embed"):
            new_k, new_v = k.replace("proj", "projection"), v
        else:
            new_k, new_v = k, v
        new["backbone." + new_k] = new_v
    return new


def _leaves(model):
    return {"/".join(map(str, path)): np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.oracle
def test_converter_layouts_round_trip():
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    tm = torchvision_tiny()
    official = official_layout(tm.state_dict())
    from_tv = load_swin(tiny_swin(), tm.state_dict())
    from_official = tiny_swin(seed=1)
    norm1_before = np.asarray(from_official.norm1.scale[...])
    load_swin(from_official, official)
    # round trip: every official weight is in the model, transposed as documented
    block = from_official.layers[2].blocks[1]
    np.testing.assert_array_equal(np.asarray(block.attn.qkv.kernel[...]),
                                  official["layers.2.blocks.1.attn.qkv.weight"].T)
    np.testing.assert_array_equal(np.asarray(block.attn.relative_position_bias_table[...]),
                                  official["layers.2.blocks.1.attn.relative_position_bias_table"])
    np.testing.assert_array_equal(np.asarray(from_official.layers[1].downsample.reduction.kernel[...]),
                                  official["layers.1.downsample.reduction.weight"].T)
    np.testing.assert_array_equal(np.asarray(from_official.patch_embed.proj.kernel[...]),
                                  official["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
    # mmdet layout (with its own output norms) gives the same weights
    mmdet = mmdet_layout(official)
    norm_w = np.linspace(0.5, 1.5, 64).astype(np.float32)
    mmdet["backbone.norm1.weight"], mmdet["backbone.norm1.bias"] = norm_w, -norm_w
    from_mmdet = load_swin(tiny_swin(), mmdet)
    a, b, c = _leaves(from_tv), _leaves(from_official), _leaves(from_mmdet)
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        if re.match(r"norm\d/", key):  # output norms: not in official / torchvision checkpoints
            continue
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_array_equal(a[key], c[key], err_msg=key)
    np.testing.assert_array_equal(c["norm1/scale"], norm_w)
    np.testing.assert_array_equal(c["norm1/bias"], -norm_w)
    # the output norms are not in the ImageNet checkpoints: left at their init, as mmdet leaves them
    np.testing.assert_array_equal(b["norm1/scale"], norm1_before)


def test_unfold_order_inverts_mmdet_order():
    x = np.arange(3 * 8, dtype=np.float32).reshape(3, 8)  # C = 2
    mmdet = x.reshape(3, 4, 2)[:, [0, 2, 1, 3], :].transpose(0, 2, 1).reshape(3, 8)
    np.testing.assert_array_equal(unfold_to_official_order(mmdet), x)


def test_converter_partial_model_and_errors():
    tiny = dict(TINY, embed_dim=8, num_heads=(1, 1, 1, 1))
    full = tiny_swin(seed=1, **tiny)
    state = {}
    for path, v in nnx.to_flat_state(nnx.state(full)):  # our weights exported by hand, official names
        state["/".join(map(str, path))] = np.asarray(v[...])
    official = {}
    for key, value in state.items():
        key = key.replace("/", ".")
        if key.startswith("norm"):
            continue
        if key.endswith(("kernel", "scale")):
            value = value.T if value.ndim == 2 else value
            if value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            key = key.rsplit(".", 1)[0] + ".weight"
        official[key] = value
    official["layers.0.blocks.0.attn.relative_position_index"] = relative_position_index(7)
    # a C3-C4 model ignores stage 4 and the last patch merging
    partial = load_swin(tiny_swin(seed=2, **dict(tiny, out_levels=(3, 4))), official)
    np.testing.assert_array_equal(np.asarray(partial.layers[1].blocks[0].mlp.fc1.kernel[...]),
                                  np.asarray(full.layers[1].blocks[0].mlp.fc1.kernel[...]))
    assert len(partial.layers) == 3 and partial.layers[2].downsample is None
    with pytest.raises(ValueError, match="relative_position_bias_table"):
        load_swin(tiny_swin(**dict(tiny, window_size=12)), official)
    bad = dict(official, **{"layers.0.blocks.0.attn.relative_position_index": relative_position_index(7)[::-1]})
    with pytest.raises(ValueError, match="relative_position_index"):
        load_swin(tiny_swin(**tiny), bad)
    with pytest.raises(ValueError, match="missing keys"):
        load_swin(tiny_swin(**tiny), {"head.weight": np.zeros((2, 64), np.float32)})
    # the builder's loader dispatches on the backbone type
    built = fill_random(nnx.eval_shape(lambda: build_part("backbone", dict(name="swin", variant="T", **tiny),
                                                         rngs=nnx.Rngs(3))))
    load_pretrained_backbone(built, official)
    np.testing.assert_array_equal(np.asarray(built.patch_embed.proj.kernel[...]),
                                  np.asarray(full.patch_embed.proj.kernel[...]))


# --- freezing, stochastic depth, sizes ----------------------------------------------------


def test_frozen_stages_get_no_gradient():
    model = tiny_swin(frozen_stages=1, out_levels=(2, 3))  # stage 1 frozen, stage 2 trains
    assert isinstance(model.patch_embed.proj.kernel, Frozen)
    assert isinstance(model.layers[0].blocks[1].attn.qkv.kernel, Frozen)
    assert isinstance(model.layers[0].downsample.reduction.kernel, Frozen)  # mmdet: part of stage 1
    assert isinstance(model.norm0.scale, Frozen)
    assert isinstance(model.layers[1].blocks[0].attn.relative_position_bias_table, nnx.Param)
    assert isinstance(model.norm1.scale, nnx.Param)
    assert len(model.layers) == 2 and model.layers[1].downsample is None
    trainable = nnx.eval_shape(lambda: SwinTransformer("T", **TINY, rngs=nnx.Rngs(0)))
    assert count_variables(trainable, Frozen) == 0  # frozen_stages=-1, the author's setting

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    images = jax.random.normal(jax.random.key(0), (2, 96, 96, 3))
    sizes = jnp.array([[20, 28], [96, 96]], jnp.int32)  # windows wholly outside image 0

    def loss(p, x):
        feats = nnx.merge(graphdef, p, rest)(x, sizes)
        return sum(jnp.sum(f**2) for f in feats.values())

    grads, image_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, images)
    flat = {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(grads)}
    assert not any(k.startswith(("patch_embed", "layers/0/", "norm0")) for k in flat)
    assert np.abs(flat["layers/1/blocks/0/attn/qkv/kernel"]).max() > 0
    assert all(np.isfinite(v).all() for v in flat.values()), "NaN/inf gradients with a padded batch"
    np.testing.assert_array_equal(np.asarray(image_grad), 0.0)  # gradients stop after the frozen stages


def test_drop_path():
    x = jnp.ones((4000, 3))
    y = drop_path(x, 0.25, jax.random.key(0))
    kept = np.asarray(y[:, 0]) > 0
    assert abs(kept.mean() - 0.75) < 0.03
    np.testing.assert_allclose(np.asarray(y[kept]), 1 / 0.75, rtol=1e-6)
    assert drop_path(x, 0.25, None) is x
    full = nnx.eval_shape(lambda: SwinTransformer("T", **TINY, drop_path_rate=0.5, rngs=nnx.Rngs(0)))
    rates = [block.drop_path_rate for stage in full.layers for block in stage.blocks]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.5, 8))  # mmdet: linear over all blocks
    model = tiny_swin(drop_path_rate=0.5, out_levels=(2,))
    apply = jitted(model)
    images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    eval_out = apply(images)[2]
    train_out = apply(images, None, jax.random.key(1))[2]
    differs = np.abs(np.asarray(eval_out - train_out)).max(axis=(1, 2, 3)) > 1e-6
    assert differs.any()  # the second block (rate 0.5/7) drops or rescales its branches
    np.testing.assert_array_equal(np.asarray(apply(images, None, jax.random.key(1))[2]), np.asarray(train_out))


def _torch_param_count(**kw):
    import torch
    import torchvision

    with torch.device("meta"):
        tm = torchvision.models.SwinTransformer([4, 4], **kw)
    return sum(p.numel() for name, p in tm.named_parameters() if not name.startswith(("head.", "norm.")))


@pytest.mark.oracle
@pytest.mark.parametrize("variant", ["T", "L"])
def test_full_size_param_count_vs_torchvision(variant):
    """Backbone parameters = torchvision's architecture without classifier and final norm
    (meta tensors), plus mmdet's three output norms (C3–C5)."""
    pytest.importorskip("torchvision")
    model = nnx.eval_shape(lambda: SwinTransformer(variant, rngs=nnx.Rngs(0)))
    embed, depths, heads, window = {"T": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
                                     "L": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12)}[variant]
    expected = _torch_param_count(embed_dim=embed, depths=list(depths), num_heads=list(heads),
                                  window_size=[window, window])
    output_norms = 2 * (2 + 4 + 8) * embed
    assert count_variables(model, nnx.Param) == expected + output_norms
    if variant == "L":
        assert model.out_channels == {3: 384, 4: 768, 5: 1536}
