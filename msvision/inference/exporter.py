"""Exports a model's inference function with ``jax.export``: the one exporter of msvision.

:func:`export_detector` exports :func:`msvision.inference.detect.make_detect_function`
once per bucket shape, with the weights as arguments (not constants), so a model with
many buckets stores them once and the functions serve every checkpoint of a config;
:func:`export_workdir` restores a work directory's model and writes its ``.jaxexport``
file (:mod:`msvision.inference.artefact`).

Platforms: ``platforms=("cuda",)`` (or several) lowers for that platform from any
host, e.g. this CPU-only machine; nothing is compiled, and the artefact is then
only runnable there. Code paths follow the lowering platform
(``lax.platform_dependent``): with the default ``msda_impl="auto"`` a CUDA/ROCm
export carries the MSDA Pallas Triton kernels (:mod:`msvision.ops.msda.auto`), a
CPU/TPU export the XLA implementation.

Native CPU kernel: in a live process ``msda_impl="auto"`` runs MSDA on the CPU with
the native C++ kernel (:mod:`msvision.ops.msda.cpu_ffi`), but an export never
contains it: :func:`export_detector` traces under
:func:`msvision.ops.msda.auto.without_native_cpu_kernel`, so the CPU branch of an
artefact is the XLA implementation. Its custom calls (``msvision_msda_cpu_*``)
have no compatibility guarantee (``jax.export`` refuses them), they exist only in a
process that compiled and registered the kernel, and an artefact must run on a
machine without a C++ compiler or msvision's sources (``load_exported`` needs only
``jax``). The cost is XLA's CPU speed (3-10x slower MSDA) when serving an artefact
on the CPU; a live ``Predictor.from_workdir`` has the kernel. An explicit
``msda_impl="cpu"`` cannot be exported (``jax.export`` raises on its custom call).
The oneDNN convolutions (:mod:`msvision.ops.onednn`, the default for bfloat16 on
CPUs with native bfloat16) are left out the same way: the export traces under
:func:`msvision.ops.conv.xla_only`.

Triton compatibility: the Pallas Triton custom call (``__gpu$xla.gpu.triton``)
carries Triton IR, which has no stability guarantee, so ``jax.export`` refuses it
unless its safety check is disabled (``allow_triton=True``, the default; the
:data:`TRITON_TARGET` check is disabled). Such a CUDA artefact must be run by the
same jax/jaxlib version that exported it. ``allow_triton=False`` builds the model
with every MSDA layer on XLA (:func:`with_msda_impl`), for an artefact within
``jax.export``'s usual compatibility window. With jax 0.10 a multi-platform artefact
including CUDA (e.g. ``platforms=("cuda", "cpu")``) of a model with MSDA needs
``allow_triton=False``: Pallas's Triton lowering refuses a module that is also lowered
for the CPU. The Triton kernels also need a static batch (``batch_size=N``): Pallas
blocks cannot depend on a symbolic dimension.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax import export as jax_export

from msvision import config_sections
from msvision.data.batching import Bucket
from msvision.data.classes import DATASET_FILE, read_class_list
from msvision.inference.artefact import save_exported
from msvision.inference.detect import make_detect_function
from msvision.inference.panoptic import panoptic_settings, require_isthing
from msvision.inference.preprocessing import Preprocessing
from msvision.inference.restore import restore_for_inference

TRITON_TARGET = "__gpu$xla.gpu.triton"  # the custom call of Pallas Triton kernels


def with_msda_impl(config: ml_collections.ConfigDict, impl: str) -> ml_collections.ConfigDict:
    """A copy of ``config`` (full or model config) whose every ``msda_impl`` (neck and head) is ``impl``."""
    config = ml_collections.ConfigDict(config.to_dict())

    def visit(section: ml_collections.ConfigDict) -> None:
        for key, value in section.items():
            if key == "msda_impl":
                section[key] = impl
            elif isinstance(value, ml_collections.ConfigDict):
                visit(value)

    visit(config)
    return config


def export_detector(graphdef, params, rest, buckets: Sequence[Bucket], *, batch_size: Optional[int] = None,
                    platforms: Sequence[str] = ("cpu",),
                    allow_triton: bool = True) -> dict[Bucket, jax_export.Exported]:
    """Exports the model's inference function once per bucket shape.

    Args:
      graphdef, params, rest: the model split as ``nnx.split(model, nnx.Param, ...)``;
        only shapes and dtypes of ``params``/``rest`` are used (arrays or
        ``jax.ShapeDtypeStruct``, e.g. of an ``nnx.eval_shape`` model).
      buckets: ``(H, W)`` padded image shapes, each a static shape of one export.
      batch_size: static batch size, or ``None`` for a symbolic batch dimension.
      platforms: subset of ``'cpu'``, ``'cuda'``, ``'rocm'``, ``'tpu'`` to lower for
        (``jax.export.export(..., platforms=...)``); need not be available here.
      allow_triton: accept Pallas Triton kernels in the export (see the module
        docstring; they need a static ``batch_size``). With False, ``jax.export``
        raises on a model whose MSDA lowers to Triton: build ``graphdef`` from
        ``with_msda_impl(config, "xla")``. The native CPU MSDA kernel is never
        exported (XLA on the CPU instead; see the module docstring).

    Returns:
      ``{bucket: Exported}``; each takes ``(weights, images, image_sizes,
      orig_sizes)`` as described in the module docstring.
    """
    from msvision.ops.conv import xla_only
    from msvision.ops.msda.auto import without_native_cpu_kernel
    from msvision.ops.platforms import tracing_for

    leaves, treedef = jax.tree.flatten((params, rest))
    detect = jax.jit(make_detect_function(graphdef, treedef))
    weight_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    batch = jax_export.symbolic_shape("b")[0] if batch_size is None else int(batch_size)
    disabled = (jax_export.DisabledSafetyCheck.custom_call(TRITON_TARGET),) if allow_triton else ()
    out = {}
    for height, width in buckets:
        bucket = (int(height), int(width))
        try:
            # portable artefacts: XLA MSDA and convolutions on the CPU (module docstring); each platform's kernels
            with without_native_cpu_kernel(), xla_only(), tracing_for(platforms):
                out[bucket] = jax_export.export(detect, platforms=tuple(platforms), disabled_checks=disabled)(
                    weight_specs,
                    jax.ShapeDtypeStruct((batch, *bucket, 3), jnp.uint8),
                    jax.ShapeDtypeStruct((batch, 2), jnp.int32),
                    jax.ShapeDtypeStruct((batch, 2), jnp.int32),
                )
        except ValueError as e:
            if batch_size is None and "Pallas" in str(e):
                raise ValueError(
                    f"{e}\n\nA Pallas (Triton) kernel's blocks cannot depend on the symbolic batch size: export "
                    "with a static batch (--batch-size N) or without the Triton kernels (--no-triton).") from e
            raise
    return out


def export_workdir(config, workdir: str, out: str, *, step: Optional[int] = None, platforms: Sequence[str] = ("cpu",),
                   batch_size: Optional[int] = None, buckets: Optional[Sequence[Bucket]] = None,
                   allow_triton: bool = True) -> dict:
    """Restores ``workdir``'s model (checkpoint and ``dataset.json``) and writes its export to ``out``;
    returns the manifest.

    ``config`` is a run config (resolved here, not changed); ``buckets`` defaults to its
    own (``data.buckets`` or the automatic set); ``allow_triton=False`` puts every MSDA
    layer on XLA first (see the module docstring).

    Raises:
      FileNotFoundError: no checkpoint or no ``WORKDIR/dataset.json`` (the message names it).
    """
    config = config_sections.resolve_config(config)
    if not allow_triton:
        # (Without a GPU platform the Triton branch is not traced at all: export_detector traces
        # under msvision.ops.platforms.tracing_for(platforms).)
        config = with_msda_impl(config, "xla")
    classes = read_class_list(workdir)
    # A panoptic config's manifest carries label_is_thing for the post-processing.
    if panoptic_settings(config.data.source, config.eval.panoptic) is not None:
        require_isthing(classes, os.path.join(workdir, DATASET_FILE))
    graphdef, params, rest, step = restore_for_inference(config, workdir, classes.num_classes, step)
    preprocessing = Preprocessing.from_config(config.data)
    buckets = tuple(preprocessing.buckets if buckets is None else buckets)
    exported = export_detector(graphdef, params, rest, buckets, batch_size=batch_size, platforms=platforms,
                               allow_triton=allow_triton)
    return save_exported(out, exported, jax.tree.leaves((params, rest)), classes, preprocessing,
                         batch_size=batch_size, step=step, config=config.to_dict())
