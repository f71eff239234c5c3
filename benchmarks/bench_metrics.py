"""Throughput of the mask metrics: PQ and AP* / AP^B*, images per second.

PQ on the real COCO panoptic sample (2 images, 640×427 and 640×360), replicated
``--replicas`` times with shifted + eroded predictions written as PNGs:

- ``msvision files``: :func:`evaluate_panoptic_files` (PNG decoding included), in this
  process and with ``--workers`` workers (their start-up included),
- ``msvision in-memory``: :meth:`PanopticQuality.add` on decoded id maps,
- reference: panopticapi's per-image algorithm written plainly (``np.unique`` of the
  combined uint64 ids, then Python dictionaries over segment pairs) on the same
  decoded maps, in this process.

AP* and AP^B* on the cocofied LVIS subset (57 real images), replicated
``--lvis-replicas`` times, ≈ ``--dets`` detections per image (perturbed ground
truth + random boxes of random COCO categories, as a detector would emit):
:func:`evaluate_lvis` against the ``lvis`` 0.5.3 package (segm) and the same package
with boundary-iou-api's cv2 boundary IoU (boundary), when ``lvis`` is installed.

    python benchmarks/bench_metrics.py [--replicas 100] [--lvis-replicas 4] [--dets 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from msvision.evaluation.lvis import cocofy_lvis  # noqa: E402
from msvision.evaluation.lvis_eval import annotation_to_rle, evaluate_lvis  # noqa: E402
from msvision.evaluation.panoptic import (  # noqa: E402
    PanopticQuality,
    evaluate_panoptic_files,
    id_to_rgb,
    read_id_map,
)

PANOPTIC = os.path.join(ROOT, "tests", "data", "coco_panoptic_sample")
LVIS = os.path.join(ROOT, "tests", "data", "lvis_v0.5_val_subset")


def reference_pq_image(gt_ids, gt_segments, pred_ids, pred_segments, stats):
    """panopticapi's per-image steps: unique over combined ids, dictionaries of pairs."""
    gt_by_id = {s["id"]: s for s in gt_segments}
    pred_by_id = {s["id"]: dict(s) for s in pred_segments}
    labels, counts = np.unique(pred_ids, return_counts=True)
    for label, count in zip(labels.tolist(), counts.tolist()):
        if label:
            pred_by_id[label]["area"] = count
    labels, counts = np.unique(gt_ids, return_counts=True)
    gt_area = dict(zip(labels.tolist(), counts.tolist()))
    offset = 256**3
    combined = gt_ids.astype(np.uint64) * offset + pred_ids.astype(np.uint64)
    labels, counts = np.unique(combined, return_counts=True)
    inter = {(int(k) // offset, int(k) % offset): int(c) for k, c in zip(labels, counts)}
    gt_matched, pred_matched = set(), set()
    for (g, p), n in inter.items():
        if g not in gt_by_id or p not in pred_by_id or gt_by_id[g].get("iscrowd", 0):
            continue
        if gt_by_id[g]["category_id"] != pred_by_id[p]["category_id"]:
            continue
        union = pred_by_id[p]["area"] + gt_area[g] - n - inter.get((0, p), 0)
        if n / union > 0.5:
            st = stats[gt_by_id[g]["category_id"]]
            st[0] += n / union
            st[1] += 1
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, s in gt_by_id.items():
        if g in gt_matched:
            continue
        if s.get("iscrowd", 0):
            crowd[s["category_id"]] = g
            continue
        stats[s["category_id"]][3] += 1
    for p, s in pred_by_id.items():
        if p in pred_matched:
            continue
        ignored = inter.get((0, p), 0)
        if s["category_id"] in crowd:
            ignored += inter.get((crowd[s["category_id"]], p), 0)
        if ignored / s["area"] <= 0.5:
            stats[s["category_id"]][2] += 1


def _timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_pq(replicas: int, repeats: int, workers: int = 2):
    from scipy import ndimage

    with open(os.path.join(PANOPTIC, "panoptic_examples.json")) as f:
        gt = json.load(f)
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp(prefix="bench_pq_")
    gt_annotations, pred_annotations, maps = [], [], []
    for r in range(replicas):
        for ann in gt["annotations"]:
            ids = read_id_map(os.path.join(PANOPTIC, "panoptic", ann["file_name"]))
            pred = np.zeros_like(ids)
            dy, dx = rng.integers(0, 6, 2)
            pred[dy:, dx:] = ids[: ids.shape[0] - dy, : ids.shape[1] - dx]
            for s in ann["segments_info"]:
                m = pred == s["id"]
                pred[m & ~ndimage.binary_erosion(m, iterations=2)] = 0
            present = set(np.unique(pred).tolist())
            segs = [{"id": s["id"], "category_id": s["category_id"]} for s in ann["segments_info"] if s["id"] in present]
            image_id = r * 10**7 + ann["image_id"]
            name = f"{image_id}.png"
            Image.fromarray(id_to_rgb(pred)).save(os.path.join(tmp, name))
            gt_annotations.append(dict(ann, image_id=image_id))
            pred_annotations.append({"image_id": image_id, "file_name": name, "segments_info": segs})
            maps.append((ids, ann["segments_info"], pred, segs))
    gt_json = dict(gt, annotations=gt_annotations)
    pred_json = {"annotations": pred_annotations}
    n = len(maps)

    def files():
        return evaluate_panoptic_files(gt_json, pred_json, os.path.join(PANOPTIC, "panoptic"), tmp).summary()

    def files_workers():
        return evaluate_panoptic_files(gt_json, pred_json, os.path.join(PANOPTIC, "panoptic"), tmp,
                                       workers=workers).summary()

    def in_memory():
        pq = PanopticQuality(gt["categories"])
        for m in maps:
            pq.add(*m)
        return pq

    def reference():
        stats = defaultdict(lambda: [0.0, 0, 0, 0])
        for m in maps:
            reference_pq_image(*m, stats)
        return stats

    def reference_files():
        def read(path):  # as panopticapi reads a PNG
            rgb = np.array(Image.open(path), dtype=np.uint32)
            return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]

        stats = defaultdict(lambda: [0.0, 0, 0, 0])
        for g, p in zip(gt_annotations, pred_annotations):
            gt_ids = read(os.path.join(PANOPTIC, "panoptic", g["file_name"]))
            reference_pq_image(gt_ids, g["segments_info"], read(os.path.join(tmp, p["file_name"])), p["segments_info"], stats)
        return stats

    t_ref_files, _ = _timed(reference_files, repeats)
    t_files, summary = _timed(files, repeats)
    t_workers, summary_workers = _timed(files_workers, repeats)
    for key, value in summary.items():  # the same counts; sums merged in another order
        assert abs(summary_workers[key] - value) < 1e-9, (key, summary_workers[key], value)
    t_mem, pq = _timed(in_memory, repeats)
    t_ref, stats = _timed(reference, repeats)
    per_category = pq.per_category()
    for cat, (_, tp, fp, fn) in stats.items():  # both implementations counted the same
        assert (tp, fp, fn) == tuple(per_category[cat][k] for k in ("TP", "FP", "FN")), cat
    times = {
        "msvision files (PNG decoding included)": t_files,
        f"msvision files, --workers {workers}": t_workers,
        "reference files (panopticapi's PNG reading)": t_ref_files,
        "msvision in-memory": t_mem,
        "reference in-memory": t_ref,
    }
    return n, summary, times


def lvis_inputs(replicas: int, dets: int):
    from pycocotools import mask as mask_utils

    with open(os.path.join(LVIS, "lvis_v0.5_val_subset.json")) as f:
        lvis = json.load(f)
    with open(os.path.join(LVIS, "coco_to_synset.json")) as f:
        base = cocofy_lvis(lvis, json.load(f))
    gt = dict(base, images=[], annotations=[])
    for r in range(replicas):
        for img in base["images"]:
            gt["images"].append(dict(img, id=r * 10**7 + img["id"]))
        for ann in base["annotations"]:
            gt["annotations"].append(dict(ann, id=len(gt["annotations"]) + 1, image_id=r * 10**7 + ann["image_id"]))
    rng = np.random.default_rng(0)
    images = {img["id"]: img for img in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    per_image = defaultdict(list)
    for ann in gt["annotations"]:
        per_image[ann["image_id"]].append(ann)
    results = []
    for image_id, img in images.items():
        h, w = img["height"], img["width"]
        for ann in per_image[image_id]:
            m = mask_utils.decode(annotation_to_rle(ann["segmentation"], h, w))
            m = np.roll(m, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            results.append({"image_id": image_id, "category_id": ann["category_id"], "segmentation": rle, "score": float(rng.random())})
        for _ in range(max(0, dets - len(per_image[image_id]))):
            m = np.zeros((h, w), np.uint8)
            bh, bw = rng.integers(8, h // 2), rng.integers(8, w // 2)
            y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
            m[y : y + bh, x : x + bw] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            results.append({"image_id": image_id, "category_id": int(rng.choice(cat_ids)), "segmentation": rle, "score": float(rng.random())})
    return gt, results


def bench_lvis(replicas: int, dets: int, repeats: int):
    gt, results = lvis_inputs(replicas, dets)
    times, values = {}, {}
    for iou_type in ("segm", "boundary"):
        t, out = _timed(lambda: evaluate_lvis(gt, copy.deepcopy(results), iou_type=iou_type), repeats)
        times[f"msvision {iou_type}"], values[f"msvision {iou_type}"] = t, out["AP"]
    try:
        np.float = float  # lvis 0.5.3 under numpy 2
        import lvis as lvis_package
    except ImportError:
        lvis_package = None
    if lvis_package is not None:
        sys.path.insert(0, os.path.join(ROOT, "tests", "evaluation"))
        from test_lvis import boundary_lvis_eval  # the oracle of the tests

        path = os.path.join(tempfile.mkdtemp(prefix="bench_lvis_"), "gt.json")
        with open(path, "w") as f:
            json.dump(gt, f)
        for iou_type, cls in (("segm", lvis_package.LVISEval), ("boundary", boundary_lvis_eval(lvis_package))):

            def run():
                ev = cls(lvis_package.LVIS(path), copy.deepcopy(results), "segm")
                ev.run()
                return ev.get_results()["AP"]

            t, ap = _timed(run, repeats)
            times[f"lvis 0.5.3 {iou_type}"], values[f"lvis 0.5.3 {iou_type}"] = t, ap
    return len(gt["images"]), len(results), times, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=100, help="copies of the 2 panoptic images")
    parser.add_argument("--lvis-replicas", type=int, default=2, help="copies of the 57 LVIS images")
    parser.add_argument("--dets", type=int, default=100, help="detections per LVIS image")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs of every implementation")
    parser.add_argument("--workers", type=int, default=2, help="--workers of the second PQ files row")
    args = parser.parse_args()
    import logging

    logging.getLogger("lvis").setLevel(logging.ERROR)
    print(f"numpy {np.__version__}, {len(os.sched_getaffinity(0))} CPU threads, load average {os.getloadavg()[0]:.2f}")

    n, summary, times = bench_pq(args.replicas, args.repeats, args.workers)
    print(f"\nPQ: {n} images (2 COCO panoptic images × {args.replicas}), PQ {summary['PQ']:.4f}, best of {args.repeats}")
    print("| PQ implementation | s | images/s | 5,000 images | vs reference (same input) |\n|---|---|---|---|---|")
    for name, t in times.items():
        ref = times["reference in-memory" if "in-memory" in name else "reference files (panopticapi's PNG reading)"]
        print(f"| {name} | {t:.2f} | {n / t:.0f} | {5000 * t / n / 60:.1f} min | {ref / t:.2f}× |")

    num_images, num_dets, times, values = bench_lvis(args.lvis_replicas, args.dets, args.repeats)
    print(f"\nAP*/AP^B*: {num_images} images (57 LVIS images × {args.lvis_replicas}), {num_dets} detections")
    print("| AP implementation | AP | s | images/s | 5,000 images | vs lvis 0.5.3 |\n|---|---|---|---|---|---|")
    for name, t in times.items():
        ref = times.get(f"lvis 0.5.3 {name.split()[-1]}")
        ratio = f"{ref / t:.2f}×" if ref else "–"
        print(f"| {name} | {values[name]:.4f} | {t:.2f} | {num_images / t:.1f} | {5000 * t / num_images / 60:.1f} min | {ratio} |")


if __name__ == "__main__":
    main()
