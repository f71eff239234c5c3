"""Training masks at COCO scale: full-image ``[B, M, H, W]`` masks vs box-frame grids.

Runs the thesis EffSeg data settings (``configs/effseg/r50_fpn_fqdet_effseg.py``: DETR
augmentation up to 1333 px, buckets up to 1408², ``max_instances`` 100, global batch 2)
on real COCO images (``../shared/data/coco_mini`` beside the project by default, or ``--coco ROOT``
with ``annotations/instances_train2017.json`` and ``train2017/``), once per mask
format, and reports per batch: the bytes of the mask arrays the step receives, the
host time to produce a batch, and how well the box-frame EffSeg targets agree with the
full-image ones (segmentation / refinement targets at 14², 28², 56², 112² of each
object's own box jittered by ±10 %, the predicted-box regime of training).

    python benchmarks/bench_mask_batches.py [--batches 20] [--box-size 128]
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from msvision.config_sections import load_config
from msvision.data.pipeline import build_train_iterator
from msvision.models.heads.roi_mask.targets import mask_targets

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def data_config(coco: str, mask_format: str, box_size: int):
    config = load_config(os.path.join(ROOT, "configs/effseg/r50_fpn_fqdet_effseg.py"))
    data = config.data
    data.train.annotations = os.path.join(coco, "annotations/instances_train2017.json")
    data.train.images = os.path.join(coco, "train2017")
    data.mask_format = mask_format
    data.box_mask_size = box_size
    data.num_threads = 1
    data.prefetch_buffer = 1
    return data


def timed_next(iterator):
    t0 = time.perf_counter()
    batch = next(iterator)
    return batch, time.perf_counter() - t0


_targets = jax.jit(mask_targets)


def agreement(image_batch, box_batch, rng):
    """Fraction of equal targets (seg, refine) per stage over the real objects' jittered boxes."""
    valid = image_batch.valid & ~image_batch.is_crowd
    boxes = image_batch.boxes.astype(np.float32)
    wh = boxes[..., 2:] - boxes[..., :2]
    jitter = rng.uniform(-0.1, 0.1, boxes.shape) * np.concatenate([wh, wh], -1)
    rois = jnp.asarray(boxes + jitter)
    gt = jnp.asarray(np.broadcast_to(np.arange(boxes.shape[1], dtype=np.int32), boxes.shape[:2]))
    full = _targets(jnp.asarray(image_batch.masks), rois, gt, image_sizes=jnp.asarray(image_batch.image_sizes))
    box = _targets(jnp.asarray(box_batch.masks), rois, gt, mask_boxes=jnp.asarray(box_batch.mask_boxes))
    stats = []
    for (fs, fr), (bs, br) in zip(full, box):
        m = valid[..., None, None]
        cells = np.broadcast_to(m, fs.shape).sum()
        stats.append((float(((np.asarray(fs) == np.asarray(bs)) & m).sum() / cells),
                      float(((np.asarray(fr) == np.asarray(br)) & m).sum() / cells)))
    return stats, int(valid.sum())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco", default=os.path.join(ROOT, "..", "shared", "data", "coco_mini"))
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--box-size", type=int, default=128)
    parser.add_argument("--append", default="")
    args = parser.parse_args(argv)
    # Both formats in lockstep (same seed: same samples and augmentation), one batch alive at a time.
    image_iter = build_train_iterator(data_config(args.coco, "image", args.box_size), seed=0)
    box_iter = build_train_iterator(data_config(args.coco, "box", args.box_size), seed=0)
    rng = np.random.default_rng(0)
    totals = np.zeros((4, 2))
    objects = 0
    record = {"image": ([], [], None), "box": ([], [], None)}

    def mib(batch):
        extra = 0 if batch.mask_boxes is None else batch.mask_boxes.nbytes
        return (batch.masks.nbytes + extra) / 2 ** 20

    for _ in range(args.batches):
        a, ta = timed_next(image_iter)
        b, tb = timed_next(box_iter)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        stats, n = agreement(a, b, rng)
        totals += n * np.asarray(stats)
        objects += n
        for key, batch, t in (("image", a, ta), ("box", b, tb)):
            sizes, times, _ = record[key]
            sizes.append(mib(batch))
            times.append(t)
            record[key] = (sizes, times, batch.masks.shape)
        del a, b
    totals /= max(objects, 1)

    lines = [
        f"#### {datetime.datetime.now():%Y-%m-%d %H:%M} — `python benchmarks/bench_mask_batches.py "
        f"--batches {args.batches} --box-size {args.box_size}`",
        "",
        f"jax {jax.__version__}; {args.batches} global batches of the thesis EffSeg data config (batch 2, "
        f"max_instances 100, DETR augmentation, buckets to 1408²) on {args.coco}; load average "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        "| mask format | mask bytes per batch, mean / max | host s per batch, median | shape of the last batch |",
        "|---|---|---|---|",
    ]
    for name, key in (("image [B, M, H, W] bool", "image"),
                      (f"box [B, M, {args.box_size}, {args.box_size}] uint8 + boxes", "box")):
        sizes, times, shape = record[key]
        lines.append(f"| {name} | {np.mean(sizes):.1f} / {np.max(sizes):.1f} MiB | {np.median(times):.3f} | "
                     f"{shape} |")
    lines += ["", f"Target agreement, box-frame vs full-image masks, over {objects} objects (RoIs = their boxes "
              "±10 %): fraction of equal cells", "",
              "| stage (grid) | segmentation target | refinement target |", "|---|---|---|"]
    for s, (seg, ref) in enumerate(totals):
        lines.append(f"| {s} ({14 * 2 ** s}²) | {seg:.4f} | {ref:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
