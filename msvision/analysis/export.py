"""``jax.export`` of a config's inference function for a deployment platform (serialized StableHLO).

:func:`export_inference` is what ``python -m msvision.export --platform cuda`` calls.
It works on a machine without the target hardware: lowering for CUDA selects the
MSDA Triton kernels (``msvision.ops.msda.auto``) and XLA's convolutions exactly as a
GPU host would; nothing is compiled. Serializing (``Exported.serialize()``) needs
the ``flatbuffers`` package (a dependency of msvision).

Exported signature (weights are arguments, not constants, so one artifact serves
every checkpoint of the config)::

    exported.call(params, rest, images, image_sizes, orig_sizes) -> detections

    params, rest: the model's ``nnx.Param`` state and the rest
        (``nnx.split(model, nnx.Param, ...)[1:]``) as nested dicts with string keys:
        :func:`export_arguments` converts them (orbax restores them in this form).
    images: [B, H, W, 3] uint8 RGB, resized and zero-padded to (H, W).
    image_sizes: [B, 2] int32 (h, w) of the resized image inside the padding.
    orig_sizes: [B, 2] int32 (h, w) of the original image.
    detections: dict of :class:`msvision.structures.Detections`' fields: boxes
        [B, K, 4] float32 (x0, y0, x1, y1) in original-image pixels, scores [B, K]
        float32, labels [B, K] int32, valid [B, K] bool (masks when the head has them).

Compatibility: the Pallas Triton custom call (``__gpu$xla.gpu.triton``) carries
Triton IR, which has no stability guarantee, so ``jax.export`` refuses it unless
allowed (``allow_triton=True``, the default here): a CUDA artifact with the MSDA
kernel must be run by the same jax/jaxlib version that exported it. Export with
``allow_triton=False`` (MSDA on XLA) for an artifact within jax.export's usual
compatibility window. With jax 0.10 a multi-platform artifact including CUDA (e.g.
``("cuda", "cpu")``) needs ``allow_triton=False``: Pallas's Triton lowering refuses
a module that is also lowered for the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from msvision.analysis.cost import _abstract, abstract_model
from msvision.structures import Batch

TRITON_TARGET = "__gpu$xla.gpu.triton"


def _model_state(model_cfg, params_or_abstract):
    if params_or_abstract is None:
        return nnx.split(abstract_model(model_cfg), nnx.Param, ...)[1:]
    if isinstance(params_or_abstract, nnx.Module):
        return nnx.split(params_or_abstract, nnx.Param, ...)[1:]
    params, rest = params_or_abstract
    return params, rest


def export_arguments(params, rest) -> tuple[dict, dict]:
    """``(params, rest)`` (``nnx.State`` or pure dicts) as the exported function takes them:
    nested dicts with string keys (layer indices "0", "1", …, as orbax stores them)."""
    return _string_keys(_pure(params)), _string_keys(_pure(rest))


def _pure(state):
    return nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state


def _string_keys(tree):
    if isinstance(tree, dict):
        return {str(k): _string_keys(v) for k, v in tree.items()}
    return tree


def _int_keys(tree):
    if isinstance(tree, dict):
        return {(int(k) if k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    return tree


def make_inference_fn(graphdef):
    """``(params, rest, images, image_sizes, orig_sizes) -> detections dict`` (see module docstring)."""

    def infer(params, rest, images, image_sizes, orig_sizes):
        b = images.shape[0]
        # Ground-truth fields are unused by predict: one empty slot each.
        batch = Batch(images=images, image_sizes=image_sizes, orig_sizes=orig_sizes,
                      image_ids=jnp.zeros((b,), jnp.int32), boxes=jnp.zeros((b, 1, 4), jnp.float32),
                      labels=jnp.zeros((b, 1), jnp.int32), valid=jnp.zeros((b, 1), bool),
                      is_crowd=jnp.zeros((b, 1), bool))
        detections = nnx.merge(graphdef, _int_keys(params), _int_keys(rest)).predict(batch)
        # A plain dict: jax.export serializes only built-in containers.
        return {k: v for k, v in vars(detections).items() if v is not None}

    return infer


def export_inference(
    config: ml_collections.ConfigDict,
    params_or_abstract: Any = None,
    platforms: Sequence[str] = ("cuda",),
    *,
    batch_size: int = 1,
    image_shape: tuple[int, int] = (800, 800),
    allow_triton: bool = True,
) -> jax.export.Exported:
    """Exports the inference function of ``config`` for ``platforms`` (``Exported``; ``.serialize()`` it).

    Call the result with ``*export_arguments(params, rest), images, image_sizes, orig_sizes``.

    Args:
      config: a full config (its ``model`` section is used) or a model config.
      params_or_abstract: ``(params, rest)`` arrays or ``ShapeDtypeStruct``s, a built
        model (``nnx.Module``), or None for the config's abstract shapes. Only shapes
        and dtypes are used: weights are arguments of the exported function.
      platforms: lowering platforms, e.g. ``("cuda",)``, ``("cuda", "cpu")`` (one
        artifact, dispatched by platform at run time), ``("tpu",)``.
      batch_size, image_shape: the static input shape ``[batch_size, H, W, 3]``.
      allow_triton: permit the MSDA Triton custom call for CUDA/ROCm (see module
        docstring); when False the model's MSDA uses XLA on every platform.
    """
    model_cfg = config.model if "model" in config else config
    if not allow_triton:
        model_cfg = _with_msda_impl(model_cfg, "xla")
    graphdef = nnx.split(abstract_model(model_cfg), nnx.Param, ...)[0]
    params, rest = export_arguments(*_model_state(model_cfg, params_or_abstract))
    h, w = image_shape
    args = (
        _abstract(params), _abstract(rest),
        jax.ShapeDtypeStruct((batch_size, h, w, 3), jnp.uint8),
        jax.ShapeDtypeStruct((batch_size, 2), jnp.int32),
        jax.ShapeDtypeStruct((batch_size, 2), jnp.int32),
    )
    disabled = [jax.export.DisabledSafetyCheck.custom_call(TRITON_TARGET)] if allow_triton else []
    return jax.export.export(jax.jit(make_inference_fn(graphdef)), platforms=tuple(platforms),
                             disabled_checks=disabled)(*args)


def _with_msda_impl(model_cfg, impl: str) -> ml_collections.ConfigDict:
    """A copy of ``model_cfg`` whose MSDA layers (neck and head, when present) use ``impl``."""
    cfg = ml_collections.ConfigDict(model_cfg.to_dict())

    def visit(section: ml_collections.ConfigDict) -> None:
        for key, value in section.items():
            if key == "msda_impl":
                section[key] = impl
            elif isinstance(value, ml_collections.ConfigDict):
                visit(value)

    visit(cfg)
    return cfg
