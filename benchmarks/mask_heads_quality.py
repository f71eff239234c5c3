"""Mask quality of the four segmentation heads side by side (the chapter-5 baselines).

Reads the runs of ``configs/effseg/quickstart_{effseg,maskrcnn,pointrend,refinemask}.py``
(same detector, data and budget; only the head differs), prints one Markdown table of
their box AP, mask AP and Boundary AP (``eval/metrics_<step>.json`` of each run's last
evaluation; Boundary AP needs ``eval.boundary_ap``, on in the quickstarts) and tiles
their ``eval/vis_<step>/`` pictures of the same validation images into one figure, a
row per image and a column per head.

    for h in effseg maskrcnn pointrend refinemask; do
      python train.py --config=configs/effseg/quickstart_$h.py --workdir=runs/quickstart_$h
      python eval.py --config=configs/effseg/quickstart_$h.py --workdir=runs/quickstart_$h --visualize 3
    done
    python benchmarks/mask_heads_quality.py --runs runs --out benchmarks/mask_heads_quality.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HEADS = (("effseg", "EffSeg"), ("maskrcnn", "Mask R-CNN++"), ("pointrend", "PointRend++"),
         ("refinemask", "RefineMask++"))
COLUMNS = (("bbox/AP", "box AP"), ("segm/AP", "mask AP"), ("segm/AP50", "AP50"), ("segm/AP75", "AP75"),
           ("segm/APs", "APs"), ("segm/APm", "APm"), ("boundary/AP", "Boundary AP"),
           ("boundary/AP75", "Boundary AP75"))


def last_metrics(workdir: str) -> tuple[int, dict] | None:
    """``(step, metrics)`` of the run's last ``eval/metrics_<step>.json``, or ``None``."""
    eval_dir = os.path.join(workdir, "eval")
    if not os.path.isdir(eval_dir):
        return None
    steps = [int(name[len("metrics_"):-len(".json")]) for name in os.listdir(eval_dir)
             if name.startswith("metrics_") and name.endswith(".json")]
    if not steps:
        return None
    with open(os.path.join(eval_dir, f"metrics_{max(steps)}.json")) as f:
        return max(steps), json.load(f)


def table(runs: dict[str, tuple[int, dict]]) -> str:
    lines = ["| head | step | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for key, title in HEADS:
        if key not in runs:
            continue
        step, metrics = runs[key]
        cells = [f"{metrics[k]:.3f}" if k in metrics else "–" for k, _ in COLUMNS]
        lines.append(f"| {title} | {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(runs_dir: str, runs: dict[str, tuple[int, dict]], out: str, images: int) -> int:
    """Tiles ``vis_<step>/<name>.png`` of the images every run drew; returns the rows drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    heads = [(key, title) for key, title in HEADS if key in runs]
    dirs = {key: os.path.join(runs_dir, f"quickstart_{key}", "eval", f"vis_{runs[key][0]}") for key, _ in heads}
    common = None
    for key, _ in heads:
        names = set(os.listdir(dirs[key])) if os.path.isdir(dirs[key]) else set()
        common = names if common is None else common & names
    names = sorted(n for n in (common or ()) if n.endswith(".png"))[:images]
    if not names:
        return 0
    fig, axes = plt.subplots(len(names), len(heads), figsize=(4 * len(heads), 4 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c, (key, title) in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(Image.open(os.path.join(dirs[key], name)))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                metrics = runs[key][1]
                ax.set_title(f"{title}\nmask AP {metrics.get('segm/AP', float('nan')):.3f}, "
                             f"Boundary AP {metrics.get('boundary/AP', float('nan')):.3f}", fontsize=10)
            if c == 0:
                ax.set_ylabel(os.path.splitext(name)[0], fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return len(names)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs", help="directory holding quickstart_<head>/ work dirs")
    parser.add_argument("--out", default="", help="PNG of the tiled pictures (none if empty)")
    parser.add_argument("--images", type=int, default=3, help="validation images in the figure")
    args = parser.parse_args(argv)
    runs = {}
    for key, _ in HEADS:
        found = last_metrics(os.path.join(args.runs, f"quickstart_{key}"))
        if found is not None:
            runs[key] = found
    if not runs:
        print(f"no evaluated quickstart_<head>/ run under {args.runs!r}", file=sys.stderr)
        return 1
    print(table(runs))
    if args.out:
        rows = figure(args.runs, runs, args.out, args.images)
        print(f"\n{rows} images × {len(runs)} heads → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
