"""``python -m msvision.analysis --config=configs/X.py [--json] [--config.model.x=...]``

Reports Params, FLOPs (MACs), compile time, latency, images/s and memory of the
config's model for training and inference (see :mod:`msvision.analysis.cost`).

Options: ``--params-only`` (parameter counts from abstract shapes, nothing compiled),
``--skip-timing`` (params + FLOPs only), ``--batch-size`` (2),
``--image-size`` (800), ``--num-objects`` (10), ``--iterations`` (3), ``--json``.

``--lower-for=cuda|tpu|rocm|cpu --devices=N`` instead lowers the config's sharded
train step and inference function for that platform on N forced CPU devices
(nothing compiled; see :mod:`msvision.analysis.lowering`) and reports Params and a
``lowering`` object; the batch defaults to 2 images per device. Exits 1 if either
function fails to lower.
"""

from __future__ import annotations

import argparse
import json
import sys

from msvision.analysis.cost import abstract_model, analyse, count_parameters, format_report
from msvision.analysis.lowering import PLATFORMS, force_cpu_devices, lower_config
from msvision import cli, config_sections


def main(argv=None) -> int:
    return cli.run(_main, argv, prog="python -m msvision.analysis")


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m msvision.analysis", description=__doc__.splitlines()[0])
    config_sections.add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--skip-timing", action="store_true", help="params and FLOPs only (no execution)")
    parser.add_argument("--params-only", action="store_true", help="parameter counts only (nothing compiled)")
    parser.add_argument("--batch-size", type=int, default=None, help="2, or 2 per device with --lower-for")
    parser.add_argument("--image-size", type=int, default=800)
    parser.add_argument("--num-objects", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--lower-for", choices=PLATFORMS, help="lower for this platform instead of measuring")
    parser.add_argument("--devices", type=int, default=1, help="forced CPU devices of the mesh (--lower-for)")
    cli.add_verbose_flag(parser)
    args = config_sections.parse_args(parser, argv)
    if args.lower_for:
        force_cpu_devices(args.devices)  # before JAX's first use
    config = config_sections.config_from_args(args)
    if args.lower_for:
        return _lower(config, args)
    if args.params_only:
        report = dict(config=args.config, params=count_parameters(abstract_model(config.model)))
        print(json.dumps(report, indent=2) if args.json else f"{args.config}: {report['params']}")
        return 0
    report = analyse(
        config.model, batch_size=args.batch_size or 2, image_size=args.image_size, num_objects=args.num_objects,
        skip_timing=args.skip_timing, iterations=args.iterations,
    )
    report["config"] = args.config
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _lower(config, args) -> int:
    lowering = lower_config(config, args.lower_for, num_devices=args.devices, batch_size=args.batch_size,
                            image_size=args.image_size, num_objects=args.num_objects)
    report = dict(config=args.config, params=count_parameters(abstract_model(config.model)), lowering=lowering)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.config}: lowered for {lowering['platform']} on {lowering['devices']} devices")
        for key in ("train", "inference"):
            status = "ok" if lowering[f"{key}_ok"] else "FAILED"
            print(f"  {key:10s} {status:7s} {lowering['lowering_s'][key]:7.1f} s  "
                  f"custom calls {lowering['custom_calls'][key]}  partitions {lowering['num_partitions'][key]}")
    for key, error in lowering.get("errors", {}).items():
        print(f"error: {key} step failed to lower for {lowering['platform']}: {error}", file=sys.stderr)
    return 1 if lowering.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
