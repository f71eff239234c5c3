"""The inference function serialised with ``jax.export``: the one exporter of msvision.

Command line::

    python -m msvision.export --config=configs/X.py --workdir=DIR --out model.jaxexport \\
        [--step N] [--platform cpu] [--platform cuda] [--batch-size N] [--buckets 320x320,256x320] \\
        [--no-triton]

A ``.jaxexport`` file is an ``.npz`` (zip) archive holding

- ``manifest``: JSON (as ``uint8`` bytes): format and version, the class list
  (``class_names``, ``label_to_category``, for a panoptic config ``label_is_thing``,
  as in ``WORKDIR/dataset.json``), the evaluation resize (``eval_scale``,
  ``eval_max_size``), the bucket shapes, the batch size (``null`` = symbolic), the
  platforms, the checkpoint step and the resolved config (``Predictor.from_exported``
  reads its ``data.source`` and ``eval.panoptic``: a panoptic export predicts panoptic
  maps too);
- ``weights_00000``, …: the flat leaves of the model's ``(params, rest)``;
- ``bucket_<H>x<W>``: one serialised :class:`jax.export.Exported` per bucket shape,
  the function ``(weights, images [B, H, W, 3] uint8, image_sizes [B, 2] int32,
  orig_sizes [B, 2] int32) -> {"boxes", "scores", "labels", "valid"}`` (+ ``"masks"
  [B, K, S, S]`` float32 probabilities on ``"mask_boxes" [B, K, 4]`` for a model with a
  segmentation head) of :func:`msvision.predict.make_detect_function`, with a symbolic
  batch dimension ``B`` by default (``--batch-size N`` fixes it).

The weights are arguments, not constants, so a model with many buckets stores
them once, and the functions of :func:`export_detector` serve every checkpoint of
a config. :func:`load_exported` gives back a callable that needs neither the
config nor the model code's Python (only ``jax``), and
``Predictor.from_exported(path)`` / ``python -m msvision.predict --exported
model.jaxexport …`` predict with it.

Platforms: ``--platform cuda`` (or several) lowers for that platform from any
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

Triton compatibility: the Pallas Triton custom call (``__gpu$xla.gpu.triton``)
carries Triton IR, which has no stability guarantee, so ``jax.export`` refuses it
unless its safety check is disabled (``allow_triton=True``, the default; the
:data:`TRITON_TARGET` check is disabled). Such a CUDA artefact must be run by the
same jax/jaxlib version that exported it. ``--no-triton`` (``allow_triton=False``)
builds the model with every MSDA layer on XLA (:func:`with_msda_impl`), for an
artefact within ``jax.export``'s usual compatibility window. With jax 0.10 a
multi-platform artefact including CUDA (e.g. ``--platform cuda --platform cpu``)
of a model with MSDA needs ``--no-triton``: Pallas's Triton lowering refuses a
module that is also lowered for the CPU. The Triton kernels also need a static
batch (``--batch-size N``): Pallas blocks cannot depend on a symbolic dimension.

Serialisation needs the ``flatbuffers`` package (a dependency of msvision).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import export as jax_export

from msvision.data.batching import Bucket
from msvision.predict import Preprocessing, make_detect_function, panoptic_class_list, panoptic_settings
from msvision.train.data_setup import ClassList, read_class_list

FORMAT = "msvision.jaxexport"
VERSION = 1
TRITON_TARGET = "__gpu$xla.gpu.triton"  # the custom call of Pallas Triton kernels

log = logging.getLogger(__name__)


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
            # portable artefacts: XLA MSDA on the CPU (module docstring); each platform's kernels
            with without_native_cpu_kernel(), tracing_for(platforms):
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


def save_exported(path: str, exported: dict[Bucket, jax_export.Exported], weights: Sequence[Any],
                  classes: ClassList, preprocessing: Preprocessing, *, batch_size: Optional[int],
                  step: Optional[int] = None, config: Optional[dict] = None) -> dict:
    """Writes a ``.jaxexport`` archive (see the module docstring); returns its manifest."""
    platforms = sorted({p for e in exported.values() for p in e.platforms})
    manifest = dict(
        format=FORMAT, version=VERSION, **classes.to_json(),
        eval_scale=preprocessing.eval_scale, eval_max_size=preprocessing.eval_max_size,
        buckets=[list(b) for b in exported], bucket_divisor=preprocessing.bucket_divisor,
        batch_size=batch_size, platforms=platforms, step=step, jax_version=jax.__version__, config=config,
    )
    arrays = {"manifest": np.frombuffer(json.dumps(manifest, default=str).encode(), np.uint8)}
    for i, w in enumerate(weights):
        w = np.asarray(w)
        if w.dtype.kind not in "biuf" or w.dtype.itemsize > 8 or str(w.dtype) == "bfloat16":
            raise TypeError(f"weight {i} has dtype {w.dtype}, which .npz cannot store")
        arrays[f"weights_{i:05d}"] = w
    for (h, w), e in exported.items():
        arrays[f"bucket_{h}x{w}"] = np.frombuffer(bytes(e.serialize()), np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:  # np.savez on a path would append ".npz"
        np.savez(f, **arrays)
    return manifest


@dataclasses.dataclass
class ExportedDetector:
    """A deserialised ``.jaxexport``: ``detector(images, image_sizes, orig_sizes) -> dict of numpy arrays``.

    Attributes:
      exported: ``{(H, W): jax.export.Exported}``.
      weights: the weight leaves (device arrays), passed to every call.
      classes, preprocessing: class list; resize and buckets (fixed: an image
        larger than every bucket is shrunk into the largest).
      batch_size: static batch size, ``None`` if symbolic.
      platforms: what the functions were lowered for.
      step: checkpoint step; manifest: the whole manifest.
    """

    exported: dict[Bucket, jax_export.Exported]
    weights: list
    classes: ClassList
    preprocessing: Preprocessing
    batch_size: Optional[int]
    platforms: tuple[str, ...]
    step: Optional[int]
    manifest: dict
    _calls: dict = dataclasses.field(default_factory=dict, repr=False)

    def __call__(self, images, image_sizes, orig_sizes) -> dict[str, np.ndarray]:
        """Runs the export of bucket ``images.shape[1:3]`` (arguments as in :func:`make_detect_function`)."""
        bucket = tuple(int(v) for v in np.shape(images)[1:3])
        if bucket not in self.exported:
            raise ValueError(f"no export for images of shape {bucket}; exported buckets: {sorted(self.exported)}")
        if bucket not in self._calls:
            self._calls[bucket] = jax.jit(self.exported[bucket].call)
        return jax.device_get(self._calls[bucket](self.weights, images, image_sizes, orig_sizes))


def load_exported(path: str) -> ExportedDetector:
    """Reads a ``.jaxexport`` archive written by :func:`save_exported`."""
    with open(path, "rb") as f:
        archive = np.load(io.BytesIO(f.read()), allow_pickle=False)
    manifest = json.loads(archive["manifest"].tobytes().decode())
    if manifest.get("format") != FORMAT or manifest.get("version", 0) > VERSION:
        raise ValueError(f"{path}: not a {FORMAT} file of version <= {VERSION} ({manifest.get('format')!r}, "
                         f"version {manifest.get('version')})")
    names = sorted(k for k in archive.files if k.startswith("weights_"))
    weights = [jax.device_put(archive[k]) for k in names]
    exported = {}
    for h, w in manifest["buckets"]:
        exported[(int(h), int(w))] = jax_export.deserialize(bytearray(archive[f"bucket_{h}x{w}"].tobytes()))
    preprocessing = Preprocessing(int(manifest["eval_scale"]), int(manifest["eval_max_size"]),
                                  tuple(exported), int(manifest["bucket_divisor"]), allow_new_buckets=False)
    classes = ClassList.from_json(manifest)
    return ExportedDetector(exported, weights, classes, preprocessing, manifest["batch_size"],
                            tuple(manifest["platforms"]), manifest["step"], manifest)


def export_workdir(config, workdir: str, out: str, *, step: Optional[int] = None, platforms: Sequence[str] = ("cpu",),
                   batch_size: Optional[int] = None, buckets: Optional[Sequence[Bucket]] = None,
                   allow_triton: bool = True) -> dict:
    """Restores ``workdir``'s model (checkpoint and ``dataset.json``) and writes its export to ``out``;
    returns the manifest.

    ``buckets`` defaults to the config's (``data.buckets`` or the automatic set);
    ``allow_triton=False`` puts every MSDA layer on XLA first (see the module docstring).

    Raises:
      FileNotFoundError: no checkpoint or no ``WORKDIR/dataset.json`` (the message names it).
    """
    from msvision.train.loop import restore_for_inference

    if not allow_triton:
        # (Without a GPU platform the Triton branch is not traced at all: export_detector traces
        # under msvision.ops.platforms.tracing_for(platforms).)
        config = with_msda_impl(config, "xla")
    classes = read_class_list(workdir)
    if panoptic_settings(config) is not None:  # the manifest carries label_is_thing for the post-processing
        classes = panoptic_class_list(classes, config.data)
    graphdef, params, rest, step = restore_for_inference(config, workdir, classes.num_classes, step)
    preprocessing = Preprocessing.from_config(config.data)
    buckets = tuple(preprocessing.buckets if buckets is None else buckets)
    exported = export_detector(graphdef, params, rest, buckets, batch_size=batch_size, platforms=platforms,
                               allow_triton=allow_triton)
    return save_exported(out, exported, jax.tree.leaves((params, rest)), classes, preprocessing,
                         batch_size=batch_size, step=step, config=config.to_dict())


def _parse_buckets(text: str) -> list[Bucket]:
    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"buckets are HxW,HxW,...: {text!r}") from e


def main(argv: Optional[Sequence[str]] = None) -> int:
    from msvision import cli

    return cli.run(_main, argv, prog="python -m msvision.export")


def _main(argv: list[str]) -> int:
    from msvision import cli
    from msvision import config as config_lib

    overrides, rest = config_lib.split_config_args(argv)
    parser = argparse.ArgumentParser(prog="python -m msvision.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True, help="output file (e.g. model.jaxexport)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--platform", action="append", default=None,
                        help="cpu | cuda | rocm | tpu; repeat (or comma-separate) for several (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=None, help="static batch size (default: symbolic)")
    parser.add_argument("--buckets", type=_parse_buckets, default=None,
                        help="image shapes HxW,HxW,... (default: the config's buckets)")
    parser.add_argument("--no-triton", action="store_true",
                        help="MSDA on XLA everywhere: no Triton kernels, an artefact not tied to this jax version")
    parser.add_argument("--log-level", default="WARNING")
    cli.add_verbose_flag(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    platforms = [p.strip() for item in (args.platform or ["cpu"]) for p in item.split(",") if p.strip()]
    config = config_lib.load_config(args.config, overrides)  # a ConfigError: one line (msvision.cli)
    manifest = export_workdir(config, args.workdir, args.out, step=args.step, platforms=platforms,
                              batch_size=args.batch_size, buckets=args.buckets, allow_triton=not args.no_triton)
    size = os.path.getsize(args.out)
    batch = "symbolic" if manifest["batch_size"] is None else manifest["batch_size"]
    print(f"exported checkpoint step {manifest['step']} for {','.join(manifest['platforms'])}: "
          f"{len(manifest['buckets'])} buckets {manifest['buckets']}, batch {batch}, "
          f"{len(manifest['class_names'])} classes -> {args.out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
