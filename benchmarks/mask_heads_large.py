"""The four chapter 5 mask heads on large objects: the table over seeds, the curves, the figures.

Reads the runs of ``configs/effseg/large_{effseg,maskrcnn,pointrend,refinemask}.py``,
one work directory per head and seed, ``RUNS/<head>_s<seed>`` (train with
``--config.seed=<seed>``), and the panoptic runs ``RUNS/panoptic_<head>`` if present:

- a Markdown table: mask AP, AP50, AP75, AP_L, Boundary AP, box AP of every head as the
  mean over seeds with the spread (min–max), from each run's last evaluation
  (``eval/metrics_<step>.json``), and PQ of the panoptic runs;
- ``--curves PNG``: validation mask AP and Boundary AP against the training step of every
  run (the ``eval/...`` rows of ``metrics.jsonl``), to see that they stopped rising;
- ``--figure PNG``: the four heads' masks (seed 0) on the same validation objects, each
  shown whole and zoomed on a part of its outline, ground truth outlined;
- ``--dataset-figure PNG``: validation images of the data with their ground-truth
  outlines and zooms on the thin parts (the docs' picture of the data).

    python benchmarks/mask_heads_large.py --runs runs/large --curves benchmarks/mask_heads_large_curves.png \\
        --figure benchmarks/mask_heads_large.png
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time

import numpy as np

HEADS = (("effseg", "EffSeg"), ("maskrcnn", "Mask R-CNN++"), ("pointrend", "PointRend++"),
         ("refinemask", "RefineMask++"))
COLUMNS = (("segm/AP", "mask AP"), ("segm/AP50", "AP50"), ("segm/AP75", "AP75"), ("segm/APl", "AP_L"),
           ("boundary/AP", "Boundary AP"), ("bbox/AP", "box AP"))
PANOPTIC = (("panoptic/PQ", "PQ"), ("panoptic/SQ", "SQ"), ("panoptic/RQ", "RQ"), ("panoptic/PQ_th", "PQ_th"),
            ("panoptic/PQ_st", "PQ_st"))


def last_metrics(workdir: str) -> tuple[int, dict] | None:
    """``(step, metrics)`` of the run's last ``eval/metrics_<step>.json``, or ``None``."""
    files = glob.glob(os.path.join(workdir, "eval", "metrics_*.json"))
    if not files:
        return None
    step = max(int(re.search(r"metrics_(\d+)\.json$", f).group(1)) for f in files)
    with open(os.path.join(workdir, "eval", f"metrics_{step}.json")) as f:
        return step, json.load(f)


def find_runs(runs_dir: str, tag: str = "") -> dict[str, dict[int, str]]:
    """``{head: {seed: workdir}}`` of the ``<head><tag>_s<seed>`` directories (``tag``: a
    variant's suffix, ``run_mask_heads_large.sh``'s TAG, e.g. ``_neck``)."""
    found: dict[str, dict[int, str]] = {}
    for path in sorted(glob.glob(os.path.join(runs_dir, "*_s*"))):
        match = re.fullmatch(r"(\w+?)" + re.escape(tag) + r"_s(\d+)", os.path.basename(path))
        if match and match.group(1) in dict(HEADS):
            found.setdefault(match.group(1), {})[int(match.group(2))] = path
    return found


def summary_table(runs_dir: str, tag: str = "") -> str:
    runs = find_runs(runs_dir, tag)
    lines = ["| head | seeds | step | " + " | ".join(t for _, t in COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for key, title in HEADS:
        metrics = [m for m in (last_metrics(d) for d in runs.get(key, {}).values()) if m is not None]
        if not metrics:
            continue
        cells = []
        for k, _ in COLUMNS:
            values = np.array([m[1][k] for m in metrics if k in m[1]])
            if values.size == 0:
                cells.append("–")
            elif values.size == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{values.mean():.3f} ({values.min():.3f}–{values.max():.3f})")
        steps = sorted({m[0] for m in metrics})
        lines.append(f"| {title} | {len(metrics)} | {'/'.join(map(str, steps))} | " + " | ".join(cells) + " |")
    panoptic = [(title, last_metrics(os.path.join(runs_dir, f"panoptic_{key}"))) for key, title in HEADS]
    panoptic = [(t, m) for t, m in panoptic if m is not None]
    if panoptic:
        lines += ["", "| head (panoptic, one seed) | step | " + " | ".join(t for _, t in PANOPTIC) + " |",
                  "|---|---|" + "---|" * len(PANOPTIC)]
        for title, (step, m) in panoptic:
            lines.append(f"| {title} | {step} | " + " | ".join(f"{m[k]:.3f}" if k in m else "–"
                                                           for k, _ in PANOPTIC) + " |")
    return "\n".join(lines)


def curves(runs_dir: str, out: str, tag: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = find_runs(runs_dir, tag)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = dict(zip(dict(HEADS), ("tab:red", "tab:blue", "tab:green", "tab:purple")))
    for key, title in HEADS:
        for seed, workdir in sorted(runs.get(key, {}).items()):
            rows = []
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                for line in f:
                    row = json.loads(line)
                    if "eval/segm/AP" in row:
                        rows.append((row["step"], row["eval/segm/AP"], row.get("eval/boundary/AP", np.nan)))
            if not rows:
                continue
            steps, ap, bap = map(np.array, zip(*sorted(rows)))
            style = dict(color=colors[key], marker="o", ms=3, alpha=0.85, ls=("-", "--", ":", "-.")[seed % 4],
                         label=f"{title} (seed {seed})")
            axes[0].plot(steps, ap, **style)
            axes[1].plot(steps, bap, **style)
    for ax, name in zip(axes, ("mask AP", "Boundary AP")):
        ax.set_xlabel("training step")
        ax.set_ylabel(f"validation {name}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def _best_prediction(results: list[dict], image_id: int, gt_mask: np.ndarray) -> np.ndarray | None:
    """The predicted mask (score ≥ 0.3) of ``image_id`` with the highest IoU with ``gt_mask``."""
    from pycocotools import mask as mask_utils

    best, best_iou = None, 0.0
    for r in results:
        if r["image_id"] != image_id or r["score"] < 0.3:
            continue
        m = mask_utils.decode(r["segmentation"]).astype(bool)
        iou = (m & gt_mask).sum() / max((m | gt_mask).sum(), 1)
        if iou > best_iou:
            best, best_iou = m, iou
    return best


def _zoom_box(mask: np.ndarray, size: int = 64) -> tuple[int, int, int, int]:
    """A ``size``² window on the outline part with the most outline pixels (thin parts, teeth)."""
    from scipy import ndimage

    edge = _outline(mask).astype(np.float32)
    density = ndimage.uniform_filter(edge, size)
    y, x = np.unravel_index(np.argmax(density), density.shape)
    h, w = mask.shape
    y0 = int(np.clip(y - size // 2, 0, max(h - size, 0)))
    x0 = int(np.clip(x - size // 2, 0, max(w - size, 0)))
    return y0, x0, y0 + size, x0 + size


def _show(ax, image, mask, gt, window=None):
    picture = image.astype(np.float32).copy()
    if mask is not None:
        picture[mask] = 0.5 * picture[mask] + 0.5 * np.array([255, 255, 255])
    outline = _outline(gt)
    picture[outline] = (0, 255, 0)
    if window is not None:
        y0, x0, y1, x1 = window
        picture = picture[y0:y1, x0:x1]
    ax.imshow(picture.astype(np.uint8), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def heads_figure(runs_dir: str, out: str, objects: int = 3, tag: str = "") -> None:
    """Rows: ``objects`` large validation objects, each whole and zoomed; columns: the heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from pycocotools.coco import COCO

    runs = find_runs(runs_dir, tag)
    heads = [(k, t) for k, t in HEADS if 0 in runs.get(k, {}) and last_metrics(runs[k][0]) is not None]
    if not heads:
        raise SystemExit(f"no evaluated <head>_s0 runs under {runs_dir}")
    from msvision.config import read_saved_config

    config = read_saved_config(os.path.join(runs[heads[0][0]][0], "config.json"))  # the record, as written
    coco = COCO(config.data.val.annotations)
    results = {}
    for key, _ in heads:
        step = last_metrics(runs[key][0])[0]
        results[key] = json.load(open(os.path.join(runs[key][0], "eval", f"results_{step}.json")))
    # The largest unoccluded-looking objects with thin parts: largest area first, one per class.
    anns = sorted(coco.dataset["annotations"], key=lambda a: -a["area"])
    chosen, classes = [], set()
    for a in anns:
        if a["category_id"] not in classes:
            chosen.append(a)
            classes.add(a["category_id"])
        if len(chosen) == objects:
            break
    fig, axes = plt.subplots(2 * len(chosen), len(heads), figsize=(3.2 * len(heads), 6.4 * len(chosen)),
                             squeeze=False)
    for r, ann in enumerate(chosen):
        info = coco.imgs[ann["image_id"]]
        image = np.asarray(Image.open(os.path.join(config["data"]["val"]["images"], info["file_name"])).convert("RGB"))
        gt = coco.annToMask(ann).astype(bool)
        x, y, w, h = (int(v) for v in ann["bbox"])
        crop = (max(y - 8, 0), max(x - 8, 0), y + h + 8, x + w + 8)
        window = _zoom_box(gt)
        for c, (key, title) in enumerate(heads):
            pred = _best_prediction(results[key], ann["image_id"], gt)
            _show(axes[2 * r][c], image, pred, gt, crop)
            _show(axes[2 * r + 1][c], image, pred, gt, window)
            if r == 0:
                m = last_metrics(runs[key][0])[1]
                axes[0][c].set_title(f"{title}\nmask AP {m.get('segm/AP', np.nan):.3f}, "
                                     f"Boundary AP {m.get('boundary/AP', np.nan):.3f}", fontsize=9)
        name = coco.cats[ann["category_id"]]["name"]
        axes[2 * r][0].set_ylabel(f"{name} (image {ann['image_id']})", fontsize=8)
        axes[2 * r + 1][0].set_ylabel("zoom ×", fontsize=8)
    fig.suptitle("predicted mask (white), ground-truth outline (green)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def dataset_figure(root: str, out: str, images: int = 4) -> None:
    """Validation images with ground-truth outlines (top) and zooms on thin parts (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from pycocotools.coco import COCO

    coco = COCO(os.path.join(root, "val", "instances.json"))
    infos = [i for i in coco.dataset["images"] if len(coco.getAnnIds(imgIds=i["id"])) >= 2][:images]
    fig, axes = plt.subplots(2, len(infos), figsize=(4.2 * len(infos), 8.4), squeeze=False)
    for c, info in enumerate(infos):
        image = np.asarray(Image.open(os.path.join(root, "val", "images", info["file_name"])).convert("RGB"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))
        union = np.zeros(image.shape[:2], bool)
        outlines = np.zeros(image.shape[:2], bool)
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            union |= m
            outlines |= _outline(m)
        picture = image.copy()
        picture[outlines] = (255, 255, 255)
        axes[0][c].imshow(picture)
        axes[0][c].set_title(", ".join(coco.cats[a["category_id"]]["name"] for a in anns), fontsize=9)
        y0, x0, y1, x1 = _zoom_box(union, 48)
        axes[1][c].imshow(image[y0:y1, x0:x1], interpolation="nearest")
        axes[1][c].set_title(f"pixels ({x0}–{x1}, {y0}–{y1})", fontsize=9)
        for ax in axes[:, c]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)


def head_costs(runs_dir: str, num_images: int, repeats: int = 3, tag: str = "",
               overrides: dict[str, list[str]] | None = None) -> list[dict]:
    """Per head (seed-0 run): mean analytic MACs of the head over the first ``num_images``
    validation images with the RoIs its own detector gives (the thesis's counting, valid
    cells only) and the median CPU latency of the jitted head alone (its ``predict``:
    the masks of every detection and the eq. 5.3 scores), batch 1. ``overrides``: ``--config.``
    overrides of a head's config (a variant run), by head key."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from msvision.config_sections import load_config
    from msvision.inference.restore import restore_for_inference
    from msvision.models.heads.effseg.cost import effseg_macs
    from msvision.models.heads.roi_mask.rois import unique_queries
    from msvision.models.heads.mask_baselines.cost import maskrcnn_macs, pointrend_macs
    from msvision.models.heads.refinemask.cost import refinemask_macs
    from msvision.train import data_setup
    from msvision.train import sharding as sharding_lib

    runs = find_runs(runs_dir, tag)
    rows = []
    for key, title in HEADS:
        if 0 not in runs.get(key, {}):
            continue
        workdir = runs[key][0]
        config = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "effseg", f"large_{key}.py"),
                             [*(overrides or {}).get(key, []), "--config.data.eval_batch_size=1"])
        info = data_setup.eval_dataset_info(config.data, workdir)
        graphdef, params, rest, step = restore_for_inference(config, workdir, info.classes.num_classes)
        seg = config.model.seg_head
        width = config.model.neck.channels

        @jax.jit
        def detect(params, rest, batch):
            model = nnx.merge(graphdef, params, rest)
            pyramid = model.pyramid(batch)
            dets, queries = model.head.predict_with_queries(pyramid, batch)
            return pyramid, dets, queries

        @jax.jit
        def head_only(params, rest, pyramid, batch, dets, queries):
            return nnx.merge(graphdef, params, rest).seg_head.predict(pyramid, batch, dets, queries)

        @jax.jit
        def effseg_actives(params, rest, pyramid, batch, dets, queries):
            head = nnx.merge(graphdef, params, rest).seg_head
            num_dets, num_queries = dets.valid.shape[1], queries.queries.shape[1]
            rois, valid, _ = jax.vmap(lambda q, v: unique_queries(q, v, num_queries, num_dets))(
                queries.detection_queries, dets.valid)
            safe = jnp.minimum(rois, num_queries - 1)
            take = lambda x: jnp.take_along_axis(x, safe[..., None], axis=1)  # noqa: E731
            stages = head(pyramid, batch.image_sizes, take(queries.queries), take(queries.boxes), valid)
            return [jnp.sum(c["valid"]) for c in stages]

        mesh = sharding_lib.make_mesh()
        macs, times = [], []
        for i, local in enumerate(data_setup.build_eval_iterator(info, shard_index=0, shard_count=1)):
            if i >= num_images:
                break
            batch = sharding_lib.shard_batch(local, mesh)
            pyramid, dets, queries = jax.block_until_ready(detect(params, rest, batch))
            valid = np.asarray(dets.valid[0])
            qids = np.asarray(queries.detection_queries[0])[valid]
            labels = np.asarray(dets.labels[0])[valid]
            n_queries = len(set(qids.tolist()))
            n_pairs = len(set(zip(qids.tolist(), labels.tolist())))
            h, w = (int(v) for v in np.asarray(batch.image_sizes[0]))
            if key == "effseg":
                actives = [int(a) for a in effseg_actives(params, rest, pyramid, batch, dets, queries)]
                m = effseg_macs(width, n_queries, actives, roi_convs=seg.roi_convs,
                                min_stage_channels=seg.min_stage_channels)
            elif key == "maskrcnn":
                m = maskrcnn_macs(width, info.classes.num_classes, n_queries, roi_convs=seg.roi_convs)
            elif key == "pointrend":
                m = pointrend_macs(width, info.classes.num_classes, n_queries, int(valid.sum()), roi_convs=seg.roi_convs,
                                   point_hidden=seg.point_hidden, subdivision_steps=seg.subdivision_steps,
                                   subdivision_points=seg.subdivision_points)
            else:
                m = refinemask_macs(width, n_pairs, -(-h // 4) * -(-w // 4), roi_convs=seg.roi_convs,
                                    semantic_convs=seg.semantic_convs, min_stage_channels=seg.min_stage_channels)
            macs.append(m["total"])
            jax.block_until_ready(head_only(params, rest, pyramid, batch, dets, queries))  # compile / warm
            runs_s = []
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(head_only(params, rest, pyramid, batch, dets, queries))
                runs_s.append(time.perf_counter() - start)
            times.append(float(np.median(runs_s)))
        rows.append(dict(head=title, key=key, step=step, images=len(macs), gmacs=float(np.mean(macs)) / 1e9,
                         latency_ms=1e3 * float(np.mean(times))))
    return rows


def costs_table(rows: list[dict]) -> str:
    ref = {r["key"]: r for r in rows}.get("refinemask")
    lines = ["| head | images | head GMACs (analytic) | vs RefineMask++ | head CPU ms | vs RefineMask++ |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        vs = (lambda k: f"{r[k] / ref[k]:.2f}×") if ref else (lambda k: "–")
        lines.append(f"| {r['head']} | {r['images']} | {r['gmacs']:.2f} | {vs('gmacs')} | {r['latency_ms']:.0f} | "
                     f"{vs('latency_ms')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/large", help="directory of the <head>_s<seed> work dirs")
    parser.add_argument("--curves", default="", help="PNG of the validation curves")
    parser.add_argument("--figure", default="", help="PNG of the heads' masks on the same objects")
    parser.add_argument("--dataset-figure", default="", help="PNG of the data (needs --data)")
    parser.add_argument("--data", default="data/shapes_large", help="the large synthetic dataset")
    parser.add_argument("--cost", type=int, default=0, help="head MACs and CPU latency on this many val images")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image (--cost)")
    parser.add_argument("--set", action="append", default=[], metavar="HEAD:--config.KEY=VALUE",
                        help="a config override of one head's runs (--cost of a variant; repeatable)")
    parser.add_argument("--tag", default="", help="a variant's runs, <head><TAG>_s<seed> (run_mask_heads_large.sh's TAG)")
    args = parser.parse_args(argv)
    if args.dataset_figure:
        dataset_figure(args.data, args.dataset_figure)
        print(f"data → {args.dataset_figure}")
    if not find_runs(args.runs, args.tag):
        if args.dataset_figure:
            return 0
        print(f"no <head>{args.tag}_s<seed> runs under {args.runs!r}", file=sys.stderr)
        return 1
    print(summary_table(args.runs, args.tag))
    if args.curves:
        curves(args.runs, args.curves, args.tag)
        print(f"curves → {args.curves}")
    if args.figure:
        heads_figure(args.runs, args.figure, tag=args.tag)
        print(f"masks → {args.figure}")
    if args.cost:
        overrides: dict[str, list[str]] = {}
        for item in args.set:
            head, sep, override = item.partition(":")
            if not sep or head not in dict(HEADS) or not override.startswith("--config."):
                parser.error(f"--set wants HEAD:--config.KEY=VALUE with HEAD one of {', '.join(dict(HEADS))}, "
                             f"got {item!r}")
            overrides.setdefault(head, []).append(override)
        print(costs_table(head_costs(args.runs, args.cost, args.repeats, args.tag, overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
