"""The inference function serialised with ``jax.export``: the command line.

Command line::

    python -m msvision.export --config=configs/X.py --workdir=DIR --out model.jaxexport \\
        [--step N] [--platform cpu] [--platform cuda] [--batch-size N] [--buckets 320x320,256x320] \\
        [--no-triton]

The file format (an ``.npz`` archive: manifest, weights, one serialised function per
bucket) is :mod:`msvision.inference.artefact`; exporting, the platforms, the native CPU
kernel an export never holds and the Triton options (``--no-triton`` is
``allow_triton=False``, ``--batch-size N`` a static batch) are
:mod:`msvision.inference.exporter`. ``Predictor.from_exported(path)`` /
``python -m msvision.predict --exported model.jaxexport …`` predict with the file.
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
