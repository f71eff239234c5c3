"""Load Swin Transformer weights into :class:`SwinTransformer`: official, mmdet or torchvision layout.

Thesis section 2.4: Swin-L from the official repository, ImageNet-22k at 384×384
(``swin_large_patch4_window12_384_22k.pth``; build the model with ``window_size``
12, the default of variant 'L'). Three key layouts are recognised:

* official (microsoft/Swin-Transformer; the checkpoint's ``model`` entry):
  ``patch_embed.proj``, ``patch_embed.norm``, ``layers.{i}.blocks.{j}.{norm1,
  attn.qkv, attn.proj, attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}``,
  ``layers.{i}.downsample.{norm, reduction}``, plus ``norm``/``head`` (classifier)
  and the buffers ``relative_position_index`` / ``attn_mask``;
* mmdet (``SwinTransformer`` state dicts and detector checkpoints, ``backbone.``
  prefix stripped): ``patch_embed.projection``, ``stages.{i}``,
  ``attn.w_msa.*``, ``ffn.layers.0.0`` / ``ffn.layers.1``, output norms
  ``norm{i}``; its patch-merging weights use ``nn.Unfold``'s channel order, undone
  here (the inverse of mmdet's ``swin_converter``);
* torchvision (``swin_t/s/b``): ``features.0.{0,2}`` (embedding conv, norm),
  ``features.{2i+1}.{j}`` blocks with ``mlp.{0,3}``, ``features.{2i+2}`` merging.

The classifier (``head``) and the final ``norm`` are dropped, as mmdet drops them:
the output norms ``norm{i}`` start at 1/0 unless the checkpoint (mmdet layout) has
them. ``relative_position_index`` buffers, when present, are checked against ours.
Linear weights are transposed ``[out, in] → [in, out]``, the conv OIHW → HWIO.
A window size different from the checkpoint's fails (the bias tables differ in
size) rather than being interpolated. torch is only needed for ``.pth`` paths.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Union

import jax.numpy as jnp
import numpy as np

from msvision.models.backbones.convert_torchvision import _read_state_dict
from msvision.models.backbones.swin import LayerNorm, Linear, SwinTransformer
from msvision.models.backbones.swin_windows import relative_position_index


def unfold_to_official_order(value: np.ndarray) -> np.ndarray:
    """mmdet ``nn.Unfold`` patch-merging channels ``c·4 + k``, ``k`` over offsets
    (0,0), (0,1), (1,0), (1,1) → official ``k'·C + c`` over (0,0), (1,0), (0,1), (1,1).
    Works on the reduction weight ``[out, 4C]`` and on the norm's ``[4C]``."""
    lead = value.shape[:-1]
    c = value.shape[-1] // 4
    blocks = np.swapaxes(value.reshape(*lead, c, 4), -1, -2)  # [..., 4 (unfold order), C]
    return blocks[..., [0, 2, 1, 3], :].reshape(*lead, 4 * c)


_MMDET_RULES = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^stages\.", "layers."),
    (r"\.attn\.w_msa\.", ".attn."),
    (r"\.ffn\.layers\.0\.0\.", ".mlp.fc1."),
    (r"\.ffn\.layers\.1\.", ".mlp.fc2."),
)


def _from_mmdet(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        for pattern, repl in _MMDET_RULES:
            key = re.sub(pattern, repl, key)
        if ".downsample." in key and (key.endswith("reduction.weight") or ".downsample.norm." in key):
            value = unfold_to_official_order(value)
        out[key] = value
    return out


def _from_torchvision(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        m = re.match(r"^features\.(\d+)\.(.*)$", key)
        if m is None:
            out[key] = value  # norm.*, head.*
            continue
        index, rest = int(m.group(1)), m.group(2)
        if index == 0:
            rest = rest.replace("0.", "proj.", 1) if rest.startswith("0.") else rest.replace("2.", "norm.", 1)
            out[f"patch_embed.{rest}"] = value
        elif index % 2 == 1:
            rest = re.sub(r"\.mlp\.0\.", ".mlp.fc1.", "." + rest)
            rest = re.sub(r"\.mlp\.3\.", ".mlp.fc2.", rest)[1:]
            out[f"layers.{(index - 1) // 2}.blocks.{rest}"] = value
        else:
            out[f"layers.{index // 2 - 1}.downsample.{rest}"] = value
    return out


def to_official_layout(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames an mmdet- or torchvision-layout Swin state dict to the official layout."""
    state = dict(state)
    if any(k.startswith("features.") for k in state):
        return _from_torchvision(state)
    if any(k.startswith("stages.") or k.startswith("patch_embed.projection") for k in state):
        return _from_mmdet(state)
    return state


def _entries(model: SwinTransformer):
    """Yields ``(official_prefix, module_or_variable)`` for every weight of ``model``."""
    yield "patch_embed.proj", model.patch_embed.proj
    if model.patch_embed.norm is not None:
        yield "patch_embed.norm", model.patch_embed.norm
    for i, stage in enumerate(model.layers):
        for j, block in enumerate(stage.blocks):
            p = f"layers.{i}.blocks.{j}"
            yield f"{p}.norm1", block.norm1
            yield f"{p}.attn.qkv", block.attn.qkv
            yield f"{p}.attn.proj", block.attn.proj
            yield f"{p}.attn.relative_position_bias_table", block.attn.relative_position_bias_table
            yield f"{p}.norm2", block.norm2
            yield f"{p}.mlp.fc1", block.mlp.fc1
            yield f"{p}.mlp.fc2", block.mlp.fc2
        if stage.downsample is not None:
            if stage.downsample.norm is not None:
                yield f"layers.{i}.downsample.norm", stage.downsample.norm
            yield f"layers.{i}.downsample.reduction", stage.downsample.reduction


def _assign(var, value: np.ndarray, key: str, hint: str = ""):
    if tuple(var.shape) != tuple(value.shape):
        raise ValueError(f"shape mismatch for {key!r}: checkpoint has {tuple(value.shape)} (converted), model "
                         f"expects {tuple(var.shape)}{hint}")
    var[...] = jnp.asarray(value, dtype=var[...].dtype)


def _ignored(key: str, model: SwinTransformer) -> bool:
    """Keys that carry nothing for the model: classifier, buffers, parts not built."""
    if key.startswith(("head.", "norm.")) or key.endswith(("attn_mask", "num_batches_tracked")):
        return True
    m = re.match(r"^layers\.(\d+)\.", key)
    if m is not None:
        i = int(m.group(1))
        return i >= len(model.layers) or (".downsample." in key and model.layers[i].downsample is None)
    m = re.match(r"^norm(\d)\.", key)
    return m is not None and model.output_norm(int(m.group(1))) is None


def load_swin(model: SwinTransformer, path_or_state_dict: Union[str, Mapping[str, Any]]) -> SwinTransformer:
    """Copies Swin weights into ``model`` in place and returns it.

    Args:
      model: a :class:`SwinTransformer` of the checkpoint's variant and window size.
      path_or_state_dict: an official / mmdet ``.pth`` path, or a state dict in any
        of the three layouts (``{name: tensor or array}``), e.g.
        ``torchvision.models.swin_t().state_dict()``.

    Raises:
      ValueError: on missing keys, unexpected keys, shape mismatches, or a
        ``relative_position_index`` buffer that differs from ours.
    """
    state = to_official_layout(_read_state_dict(path_or_state_dict))
    ws = model.window_size
    hint = f"; wrong variant or window size (model: embed {model.embed_dim}, window {ws})?"
    used, missing = set(), []

    def take(key):
        if key not in state:
            missing.append(key)
            return None
        used.add(key)
        return state[key]

    for prefix, target in _entries(model):
        if isinstance(target, Linear):
            w = take(f"{prefix}.weight")
            if w is not None:
                _assign(target.kernel, w.T, f"{prefix}.weight", hint)
            if target.bias is not None and (b := take(f"{prefix}.bias")) is not None:
                _assign(target.bias, b, f"{prefix}.bias", hint)
        elif isinstance(target, LayerNorm):
            for ours, theirs in (("scale", "weight"), ("bias", "bias")):
                if (v := take(f"{prefix}.{theirs}")) is not None:
                    _assign(getattr(target, ours), v, f"{prefix}.{theirs}", hint)
        elif prefix == "patch_embed.proj":
            if (w := take(f"{prefix}.weight")) is not None:
                _assign(target.kernel, w.transpose(2, 3, 1, 0), f"{prefix}.weight", hint)  # OIHW -> HWIO
            if (b := take(f"{prefix}.bias")) is not None:
                _assign(target.bias, b, f"{prefix}.bias", hint)
        else:  # relative_position_bias_table
            if (t := take(prefix)) is not None:
                _assign(target, t, prefix, hint)
    for i in range(4):  # mmdet output norms, when the checkpoint has them
        norm = model.output_norm(i)
        if norm is not None and f"norm{i}.weight" in state:
            _assign(norm.scale, take(f"norm{i}.weight"), f"norm{i}.weight")
            _assign(norm.bias, take(f"norm{i}.bias"), f"norm{i}.bias")

    expected_index = relative_position_index(ws).reshape(-1)
    for key in [k for k in state if k.endswith("relative_position_index")]:
        used.add(key)
        index = np.asarray(state[key]).reshape(-1)
        if not _ignored(key, model) and not np.array_equal(index.astype(np.int64), expected_index):
            raise ValueError(f"{key!r} differs from the relative position index of a {ws}×{ws} window")
    unexpected = [k for k in state if k not in used and not _ignored(k, model)]
    if missing or unexpected:
        raise ValueError(
            f"Swin checkpoint does not match the model (embed {model.embed_dim}, depths {model.depths}, window {ws}): "
            f"missing keys {missing[:10]}{' …' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{' …' if len(unexpected) > 10 else ''}"
        )
    return model
