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
  segmentation head) of :func:`msvision.inference.detect.make_detect_function`, with a
  symbolic batch dimension ``B`` by default (``--batch-size N`` fixes it).

The weights are arguments, not constants, so a model with many buckets stores
them once, and the functions of :func:`~msvision.inference.exporter.export_detector`
serve every checkpoint of a config. :func:`~msvision.inference.artefact.load_exported`
gives back a callable that needs neither the config nor the model code's Python (only
``jax``), and ``Predictor.from_exported(path)`` / ``python -m msvision.predict --exported
model.jaxexport …`` predict with it. This module is the command line over
:mod:`msvision.inference.exporter` (exporting) and :mod:`msvision.inference.artefact`
(the file).

Platforms: ``--platform cuda`` (or several) lowers for that platform from any
host, e.g. this CPU-only machine; nothing is compiled, and the artefact is then
only runnable there. Code paths follow the lowering platform
(``lax.platform_dependent``): with the default ``msda_impl="auto"`` a CUDA/ROCm
export carries the MSDA Pallas Triton kernels (:mod:`msvision.ops.msda.auto`), a
CPU/TPU export the XLA implementation.

Native CPU kernel: in a live process ``msda_impl="auto"`` runs MSDA on the CPU with
the native C++ kernel (:mod:`msvision.ops.msda.cpu_ffi`), but an export never
contains it: ``export_detector`` traces under
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
``TRITON_TARGET`` check is disabled). Such a CUDA artefact must be run by the
same jax/jaxlib version that exported it. ``--no-triton`` (``allow_triton=False``)
builds the model with every MSDA layer on XLA (``with_msda_impl``), for an
artefact within ``jax.export``'s usual compatibility window. With jax 0.10 a
multi-platform artefact including CUDA (e.g. ``--platform cuda --platform cpu``)
of a model with MSDA needs ``--no-triton``: Pallas's Triton lowering refuses a
module that is also lowered for the CPU. The Triton kernels also need a static
batch (``--batch-size N``): Pallas blocks cannot depend on a symbolic dimension.

Serialisation needs the ``flatbuffers`` package (a dependency of msvision).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

from msvision import cli, config_sections
from msvision.data.batching import Bucket
from msvision.inference.exporter import export_workdir


def _parse_buckets(text: str) -> list[Bucket]:
    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"buckets are HxW,HxW,...: {text!r}") from e


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run(_main, argv, prog="python -m msvision.export")


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m msvision.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config_sections.add_config_argument(parser, help="the config file of the trained model")
    parser.add_argument("--workdir", required=True, help="the work directory of the trained model")
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
    args = config_sections.parse_args(parser, argv)
    cli.setup_logging(args.log_level)
    platforms = [p.strip() for item in (args.platform or ["cpu"]) for p in item.split(",") if p.strip()]
    config = config_sections.config_from_args(args)  # a ConfigError: one line (msvision.cli)
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
