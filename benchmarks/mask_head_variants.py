"""Evaluate one trained mask-head run with inference-time variants of its head (same weights).

Any ``model.seg_head`` field that only changes inference (PointRend++'s subdivision steps
and points, EffSeg's refined cells per RoI, the stages used, the mask threshold, ...) can
be varied on a checkpoint without training: each variant builds the head with the fields
overridden, loads the run's parameters into it and evaluates the validation split. Used to
set the heads side by side at equal budgets (``benchmarks/RESULTS.md``, "Mask heads on
large objects").

    python benchmarks/mask_head_variants.py --config=configs/effseg/large_pointrend.py \\
        --workdir=runs/large/pointrend_s0 \\
        --variant "coarse 28²: subdivision_steps=0" \\
        --variant "400 points: subdivision_points=400" [--json out.json]

A variant is ``name: key=value, key=value`` (values are Python literals: ``3``,
``(100, 200, 400)``, ``'sfm'``). The run's
own head is evaluated first as the reference row. Evaluation outputs go to
``WORKDIR/diagnostics/<variant>/eval/``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.effseg_diagnostics import evaluate_variant, run_parser, table, variant_graphdef  # noqa: E402
from msvision import config as config_lib  # noqa: E402
from msvision import config_sections  # noqa: E402
from msvision.checkpoint import find_checkpoint_step  # noqa: E402
from msvision.inference.restore import restore_for_inference  # noqa: E402
from msvision.train import data_setup  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict]:
    """``"name: a=1, b=(2, 3), c='x'"`` → ``("name", {"a": 1, "b": (2, 3), "c": "x"})``."""
    name, sep, body = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"a variant is 'name: key=value, ...', got {text!r}")
    try:
        call = ast.parse(f"f({body})", mode="eval").body
        if call.args:
            raise ValueError("positional value")
        return name.strip(), {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"variant {text!r}: values must be Python literals as key=value ({e})") from None


def main(argv=None) -> int:
    overrides, rest_args = config_lib.split_config_args(sys.argv[1:] if argv is None else argv)
    parser = run_parser(__doc__)
    parser.add_argument("--variant", action="append", default=[], help="'name: key=value, ...' (repeatable)")
    parser.add_argument("--no-reference", action="store_true", help="skip the run's own head")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(rest_args)
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.WARNING)
    config = config_sections.load_config(args.config, overrides)
    seg = config.model.seg_head
    for name, fields in variants:
        unknown = [k for k in fields if k not in seg]
        if unknown:
            parser.error(f"variant {name!r}: model.seg_head ({seg.name}) has no field {', '.join(unknown)}")
    step = find_checkpoint_step(args.workdir, args.step)
    info = data_setup.eval_dataset_info(config.data, args.workdir)
    _, params, rest, step = restore_for_inference(config, args.workdir, info.classes.num_classes, step)
    report: dict = dict(config=args.config, workdir=args.workdir, step=step, head=seg.name, variants={})
    todo = ([] if args.no_reference else [("as trained", {})]) + variants
    rows = []
    for name, fields in todo:
        slug = re.sub(r"[^\w.-]+", "_", name).strip("_") or "variant"
        metrics = evaluate_variant(config, info, variant_graphdef(config, **fields), params, rest,
                                   os.path.join(args.workdir, "diagnostics", slug), step)
        rows.append((name, metrics))
        report["variants"][name] = dict(overrides=fields, metrics=metrics)
        print(table(rows[-1:]), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
    print(f"\n{seg.name} at step {step}:\n" + table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
