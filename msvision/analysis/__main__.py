"""``python -m msvision.analysis --config=configs/X.py [--json] [--config.model.x=...]``

Reports Params, FLOPs (MACs), compile time, latency, images/s and memory of the
config's model for training and inference (see :mod:`msvision.analysis.cost`).

Options: ``--skip-timing`` (params + FLOPs only), ``--batch-size`` (2),
``--image-size`` (800), ``--num-objects`` (10), ``--iterations`` (3), ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys

from msvision.analysis.cost import analyse, format_report
from msvision.config import load_config, split_config_args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    overrides, rest = split_config_args(argv)
    parser = argparse.ArgumentParser(prog="python -m msvision.analysis", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file with get_config()")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--skip-timing", action="store_true", help="params and FLOPs only (no execution)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=800)
    parser.add_argument("--num-objects", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations after one warm-up")
    args = parser.parse_args(rest)
    config = load_config(args.config, overrides)
    report = analyse(
        config.model, batch_size=args.batch_size, image_size=args.image_size, num_objects=args.num_objects,
        skip_timing=args.skip_timing, iterations=args.iterations,
    )
    report["config"] = args.config
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
