"""Load a torchvision ResNet state dict (``.pth``) into :class:`ResNet`.

The user supplies the torchvision ImageNet checkpoint (thesis section 2.4:
torchvision "version 1" weights, e.g. ``resnet50-0676ba61.pth``). Conv weights are
transposed OIHW → HWIO; BatchNorm ``weight``/``bias``/``running_mean``/``running_var``
go into the frozen affine. ``fc.*`` and ``num_batches_tracked`` are ignored, as are
stages the module does not build (``out_levels`` below C5). torch is imported
lazily: it is only needed when a ``.pth`` path is given.
"""

from __future__ import annotations

from typing import Any, Mapping, Union

import jax.numpy as jnp
import numpy as np

from msvision.models.backbones.resnet import ResNet
from msvision.models.layers import Conv2d, FrozenBatchNorm


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        return value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _read_state_dict(path_or_state_dict) -> dict[str, np.ndarray]:
    if isinstance(path_or_state_dict, Mapping):
        state = path_or_state_dict
    else:
        import torch  # optional dependency, only for reading .pth files

        state = torch.load(str(path_or_state_dict), map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
        elif isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
            state = state["model"]
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone.body.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = _to_numpy(value)
    return out


def _module_entries(model: ResNet):
    """Yields ``(torch_prefix, module)`` for every conv and BatchNorm of ``model``."""
    yield "conv1", model.conv1
    yield "bn1", model.bn1
    for i, stage in enumerate(model.stages()):
        for j, block in enumerate(stage):
            p = f"layer{i + 1}.{j}"
            for k in range(1, block.num_convs + 1):
                yield f"{p}.conv{k}", getattr(block, f"conv{k}")
                yield f"{p}.bn{k}", getattr(block, f"bn{k}")
            if block.downsample_conv is not None:
                yield f"{p}.downsample.0", block.downsample_conv
                yield f"{p}.downsample.1", block.downsample_bn


def _assign(var, value: np.ndarray, key: str):
    if tuple(var.shape) != tuple(value.shape):
        raise ValueError(
            f"shape mismatch for {key!r}: checkpoint has {tuple(value.shape)} (converted), "
            f"model expects {tuple(var.shape)}; wrong depth or width?"
        )
    var[...] = jnp.asarray(value, dtype=var[...].dtype)


def load_torchvision_resnet(model: ResNet, path_or_state_dict: Union[str, Mapping[str, Any]]) -> ResNet:
    """Copies torchvision ResNet weights into ``model`` in place and returns it.

    Args:
      model: a :class:`ResNet` of the checkpoint's depth and width.
      path_or_state_dict: path to a torchvision ``.pth`` file, or a state dict
        (``{name: tensor or array}``), e.g. ``torchvision.models.resnet50().state_dict()``.

    Raises:
      ValueError: on missing keys, unexpected keys or shape mismatches.
    """
    state = _read_state_dict(path_or_state_dict)
    used = set()
    missing = []
    for prefix, module in _module_entries(model):
        if isinstance(module, Conv2d):
            key = f"{prefix}.weight"
            if key not in state:
                missing.append(key)
                continue
            _assign(module.kernel, state[key].transpose(2, 3, 1, 0), key)  # OIHW -> HWIO
            used.add(key)
        elif isinstance(module, FrozenBatchNorm):
            for ours, theirs in (("weight", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
                key = f"{prefix}.{theirs}"
                if key not in state:
                    missing.append(key)
                    continue
                _assign(getattr(module, ours), state[key], key)
                used.add(key)
    built_stages = len(model.stages())
    skipped_prefixes = ("fc.",) + tuple(f"layer{i}." for i in range(built_stages + 1, 5))
    unexpected = [
        k for k in state
        if k not in used and not k.endswith("num_batches_tracked") and not k.startswith(skipped_prefixes)
    ]
    if missing or unexpected:
        raise ValueError(
            f"torchvision ResNet checkpoint does not match ResNet-{model.depth} (width {model.width}): "
            f"missing keys {missing[:10]}{' …' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{' …' if len(unexpected) > 10 else ''}"
        )
    return model
