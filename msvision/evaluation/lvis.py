"""Cocofied LVIS and the AP* / AP^B* command (thesis section 2.3).

"Cocofying" LVIS v0.5 (detectron2's ``datasets/prepare_cocofied_lvis.py``) keeps the
annotations whose LVIS synset is one of the 80 COCO categories and renumbers them
to COCO category ids, so that COCO-trained models can be scored against LVIS's
more precise masks. Evaluation with LVIS's rules is in
:mod:`msvision.evaluation.lvis_eval`.

    python -m msvision.evaluation.lvis cocofy --lvis lvis_v0.5_val.json \\
        --synsets coco_to_synset.json --out lvis_v0.5_val_cocofied.json
    python -m msvision.evaluation.lvis eval --gt lvis_v0.5_val_cocofied.json \\
        --results segm_results.json [--iou-type segm|boundary] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Mapping
from typing import Optional, Sequence

from msvision.cli import add_verbose_flag, check_records, read_json, require, run
from msvision.evaluation.lvis_eval import IOU_THRESHOLDS, evaluate_lvis

_CATEGORY_LISTS = ("not_exhaustive_category_ids", "neg_category_ids")


def synset_to_coco_id(coco_to_synset) -> dict[str, int]:
    """``synset → COCO category id`` from lvis-api's ``coco_to_synset.json``
    (``{name: {"coco_cat_id", "synset", ...}}``) or a list of
    ``{"synset", "coco_cat_id"}`` (detectron2's ``COCO_SYNSET_CATEGORIES``)."""
    entries = coco_to_synset.values() if isinstance(coco_to_synset, Mapping) else coco_to_synset
    return {e["synset"]: int(e["coco_cat_id"]) for e in entries}


def cocofy_lvis(lvis: dict, coco_to_synset) -> dict:
    """LVIS ground truth restricted to the COCO categories, with COCO category ids.

    As detectron2's ``cocofy_lvis``: annotations of COCO synsets are kept in order,
    given their COCO ``category_id`` and new ids ``1..N``; every image keeps its
    record, its ``neg_category_ids`` and ``not_exhaustive_category_ids`` mapped the
    same way (other categories dropped); the categories kept (in LVIS order, with
    the COCO id) are the COCO ones that occur in an annotation or in one of those
    image lists. Other top-level keys are copied.

    Args:
      lvis: an LVIS annotation dict (``images``, ``annotations``, ``categories``).
      coco_to_synset: see :func:`synset_to_coco_id`.

    Returns:
      a new dict; ``lvis`` is not modified.
    """
    to_coco = synset_to_coco_id(coco_to_synset)
    lvis_to_coco = {c["id"]: to_coco[c["synset"]] for c in lvis["categories"] if c["synset"] in to_coco}
    out = {k: copy.deepcopy(v) for k, v in lvis.items() if k not in ("annotations", "categories")}
    used: set[int] = set()
    annotations = []
    for ann in lvis["annotations"]:
        coco_id = lvis_to_coco.get(ann["category_id"])
        if coco_id is None:
            continue
        new = copy.deepcopy(ann)
        new["category_id"] = coco_id
        new["id"] = len(annotations) + 1
        annotations.append(new)
        used.add(coco_id)
    out["annotations"] = annotations
    for image in out["images"]:
        for key in _CATEGORY_LISTS:
            if key in image:
                image[key] = [lvis_to_coco[c] for c in image[key] if c in lvis_to_coco]
                used.update(image[key])
    out["categories"] = []
    for cat in lvis["categories"]:
        coco_id = lvis_to_coco.get(cat["id"])
        if coco_id is not None and coco_id in used:
            new = copy.deepcopy(cat)
            new["id"] = coco_id
            out["categories"].append(new)
    return out


def format_table(metrics: dict[str, float], iou_type: str, max_dets: int) -> str:
    """LVISEval's ``print_results`` layout."""
    iou_all = f"{IOU_THRESHOLDS[0]:0.2f}:{IOU_THRESHOLDS[-1]:0.2f}"
    lines = [f"IoU metric: {iou_type}"]
    for key, value in metrics.items():
        kind = ("Average Precision", "(AP)") if key.startswith("AP") else ("Average Recall", "(AR)")
        suffix = key[2:].split("@")[0]
        iou = f"{int(suffix) / 100:0.2f}" if suffix.isdigit() else iou_all
        area = suffix if suffix in ("s", "m", "l") else "all"
        group = suffix if suffix in ("r", "c", "f") else "all"
        lines.append(
            f" {kind[0]:<18} {kind[1]} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} "
            f"catIds={group:>3s}] = {value:0.3f}"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(_main, argv, prog="python -m msvision.evaluation.lvis")


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m msvision.evaluation.lvis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cocofy", help="restrict LVIS annotations to the COCO categories (COCO ids)")
    p.add_argument("--lvis", required=True, help="LVIS annotation JSON (e.g. lvis_v0.5_val.json)")
    p.add_argument("--synsets", required=True, help="coco_to_synset.json of lvis-api")
    p.add_argument("--out", required=True, help="output JSON (e.g. lvis_v0.5_val_cocofied.json)")
    p = sub.add_parser("eval", help="AP* / AP^B* of COCO-format segmentation results")
    p.add_argument("--gt", required=True, help="cocofied LVIS JSON")
    p.add_argument("--results", required=True, help="COCO results JSON (list of dicts with RLE segmentation)")
    p.add_argument("--iou-type", choices=("segm", "boundary"), default="segm")
    p.add_argument("--max-dets", type=int, default=300)
    p.add_argument("--dilation-ratio", type=float, default=0.02, help="boundary width / image diagonal")
    p.add_argument("--json", action="store_true", help="print one JSON object of fractions")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)

    if args.command == "cocofy":
        lvis = read_json(args.lvis, "LVIS annotations")
        for key, fields in (("images", ("id",)), ("annotations", ("category_id",)), ("categories", ("id", "synset"))):
            check_records(lvis, key, fields, args.lvis)
        synsets = read_json(args.synsets, "coco_to_synset.json")
        require(isinstance(synsets, dict), args.synsets, "expected an object {coco name: {coco_cat_id, synset}}")
        cocofied = cocofy_lvis(lvis, synsets)
        with open(args.out, "w") as f:
            json.dump(cocofied, f)
        print(
            f"{args.out}: {len(cocofied['annotations'])} of {len(lvis['annotations'])} annotations, "
            f"{len(cocofied['categories'])} categories, {len(cocofied['images'])} images"
        )
        return 0

    metrics = evaluate_lvis(
        args.gt, args.results, iou_type=args.iou_type, max_dets=args.max_dets, dilation_ratio=args.dilation_ratio
    )
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_table(metrics, args.iou_type, args.max_dets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
