"""Input-pipeline throughput on real COCO images: msvision's training pipeline against
DETR's torch ``DataLoader`` doing the same work.

Both sides read the same images (``coco_mini``, found at ``../shared/data/coco_mini``
next to the repository, or ``--root``) in the same order, ``--batch-size`` images per
batch (2: the thesis's images per GPU, thesis §3.4.1, §4.4.1, §4.5.1), the same number of
batches, one after the other in this process, for each worker count:

* ours — ``msvision.data.pipeline.build_train_iterator``, built as ``train.py`` builds
  it from a thesis config (``--config``, default ``configs/fqdet/r50_fpn_fqdet.py``:
  DETR augmentation — flip 0.5; shortest edge 480…800 step 32, longest ≤ 1333; with
  probability 0.5 the resize 400/500/600 → crop 384…600 → resize branch — then padding
  into the batch's bucket), parallelised by the config's own knobs, given as overrides
  the way ``train.py`` takes them:

  - ``threads``: ``data.num_threads=N``, ``data.num_workers=0`` — grain read threads
    in the training process; what ``train.py`` runs (the default is 8 threads);
  - ``processes``: ``data.num_workers=N`` grain worker processes (``mp_prefetch``,
    spawned) with ``data.num_threads=1`` and ``data.prefetch_buffer=1`` each — the
    like-for-like of a ``DataLoader`` with ``num_workers=N``.

  ``N = 0`` reads in the calling thread (both modes are then the same).
* torchvision — DETR's recipe (``datasets/coco.py``, ``datasets/transforms.py``,
  ``util/misc.py``): PIL decode and ``convert('RGB')``, the COCO annotations to box
  tensors (``ConvertCocoPolysToMask`` without masks), ``RandomHorizontalFlip``,
  ``RandomSelect(RandomResize(scales, max_size=1333), Compose(RandomResize([400, 500,
  600]), RandomSizeCrop(384, 600), RandomResize(scales, max_size=1333)))``,
  ``ToTensor``, ``Normalize`` (boxes transformed alike, normalised cxcywh at the end)
  and ``collate_fn``'s NestedTensor (float32 batch padded to its largest image + pixel
  mask), in ``DataLoader(num_workers=N)`` (fork, prefetch factor 2, torch intra-op
  threads 1 in the main process as in the workers).

Where the work differs (read the table with it):

* padding: ours pads to the smallest bucket holding the batch (static shapes for XLA,
  a 768…1408 square grid; more pixels than DETR's batch maximum) but in uint8 — the
  model normalises on the device — while DETR converts to float32 and normalises on
  the host (4 bytes per value). The table gives the padded pixels per image of both.
* random draws: DETR draws from Python's ``random`` and torch's generator (seeded here
  per sample position, so a run does not depend on the worker count), ours from
  ``np.random.default_rng([seed, position])``: same distributions, different draws.
  The table gives the mean output image size of both.
* crowd regions: ours keeps them (ignore slots), DETR drops them at loading.

Throughput is steady state: the images of the batches after the first ``2N + 1`` (the
warm-up: up to 2 batches per worker can be ready before they are asked for —
DataLoader's ``prefetch_factor`` 2, grain's 1 prefetched + 1 queued per worker process,
so the ``processes`` mode sets ``data.prefetch_buffer=1``; grain threads start on the
first request) divided by the wall time from the last warm-up batch to the last batch;
the median of ``--repeats`` runs, the sides interleaved (torchvision, ours,
torchvision, …) so that a change of background load hits both. Start-up (building the
iterator: config, annotation index, worker processes; then the first batch) is the
"first batch" column. Left over, at most a few batches of the run: the work in flight
when the run stops (grain's training stream is infinite and its workers keep reading
ahead, which counts against ours; torch's sampler ends with the run). Default run
length: 100 batches (2.5 epochs of coco_mini's 80 training images; every epoch
reshuffled, as in training); ``--quick`` times 11–15 batches: indicative only. Every
image file is read once before timing (page cache warm for both). The machine may be
shared: the 1-minute load average is printed before and after.

Usage:
    JAX_PLATFORMS=cpu python benchmarks/bench_pipeline.py [--root DIR] [--split train2017]
        [--images N] [--batches K] [--repeats 3] [--batch-size 2] [--workers 1 2] [--modes threads processes]
        [--config configs/fqdet/r50_fpn_fqdet.py] [--quick] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import grain  # noqa: E402

from msvision.config_sections import load_config  # noqa: E402
from msvision.data.pipeline import build_train_iterator  # noqa: E402

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ROOT = os.path.join(REPOSITORY, "..", "shared", "data", "coco_mini")
DEFAULT_CONFIG = os.path.join(REPOSITORY, "configs", "fqdet", "r50_fpn_fqdet.py")

# DETR's datasets/coco.py make_coco_transforms('train').
DETR_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
DETR_MAX_SIZE = 1333
DETR_MEAN, DETR_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# ---------------------------------------------------------------- GPU host budget
# The thesis's training speed. tFPS = training steps per second (forward + backward +
# optimizer) on ONE batch of two 800×800 images with ten objects each, on one GeForce GTX
# 1660 Ti (thesis §2.3, §3.4.2, §4.4.1). It counts batches, not images: §3.4.3 calls the
# time to process a batch of two 1/FPS (and the released code averages 1/t of one step,
# DetSeg ``utils/analysis.py``, ``analyze_model``).
THESIS_TFPS = {  # name: (tFPS, iFPS on the same batch and GPU, thesis table)
    "R50-BiFPN RetinaNet": (1.8, 6.0, "table 3.1"),
    "Faster R-CNN head": (1.8, 4.0, "table 4.7"),
    "FQDet improved": (1.7, 5.0, "table 4.7"),
    "FQDet base": (1.6, 4.8, "table 4.1"),
}
# From section 4.5 on, the thesis gives inference FPS only (§4.5.1, §5.4.1): batch 1,
# first 100 val images, RTX 3060 Ti (A100 for table 4.22). Training images/s are derived
# with the ratio iFPS / tFPS that the chapters 3–4 rows measured on one GPU and one batch
# (FQDet, table 4.7: 5.0 / 1.7 = 2.94; the RetinaNet rows of table 3.1: 2.9–3.3).
# The FQDet ratio is used (the fastest training relative to inference of the FQDet rows, so
# the most demanding budget). Batch: 2 images per GPU in chapters 3–4 (§3.4.1, §4.4.1,
# §4.5.1); the EffSeg runs used 1 (§5.4.1) — the per-image budget is taken as the same.
THESIS_IFPS_ONLY = {  # name: (iFPS images/s, thesis table, GPU)
    "FQDet R50-FPN": (21.6, "table 4.8", "RTX 3060 Ti"),
    "FQDetV2 R50-FPN": (17.7, "table 4.20", "RTX 3060 Ti"),
    "FQDetV2 R50-DefEnc-P3": (15.5, "table 4.22", "A100"),
    "FQDetV2 Swin-L-DefEnc-P3": (5.8, "table 4.22", "A100"),
    "FQDetV2 + EffSeg 300 queries": (7.8, "table 5.3", "RTX 3060 Ti"),
}
TRAIN_OVER_INFER = 1.7 / 5.0  # table 4.7 (FQDet: tFPS 1.7, iFPS 5.0)
EIGHT_GPU_CONFIG = "FQDetV2 R50-DefEnc-P3"  # the fastest of the 8-GPU runs (§4.5.1)


def gpu_host_budget() -> tuple[float, list[str]]:
    """The images/s one GPU consumes in training (the largest of the thesis's configs) and
    the lines that explain it."""
    measured = {name: 2 * tfps for name, (tfps, _, _) in THESIS_TFPS.items()}
    derived = {name: ifps * TRAIN_OVER_INFER for name, (ifps, *_) in THESIS_IFPS_ONLY.items()}
    need = max(max(measured.values()), max(derived.values()))
    top_measured = max(measured, key=measured.get)
    top_derived = max(derived, key=derived.get)
    lines = [
        f"GPU host budget (batch 2 per device): the pipeline must deliver ≥ {need:.1f} images/s per GPU, "
        f"{2 * need:.0f} per host for the thesis's 2-GPU runs (§3.4.1, §4.4.1); its 8-GPU runs (§4.5.1) "
        f"need {8 * derived[EIGHT_GPU_CONFIG]:.0f} per 8-GPU host ({EIGHT_GPU_CONFIG}, "
        f"{THESIS_IFPS_ONLY[EIGHT_GPU_CONFIG][1]}).",
        f"- measured in the thesis (training FPS, GTX 1660 Ti, steps of 2×800² images): at most "
        f"{THESIS_TFPS[top_measured][0]} steps/s = {measured[top_measured]:.1f} images/s per GPU "
        f"({top_measured}, thesis {THESIS_TFPS[top_measured][2]}).",
        f"- the thesis gives only INFERENCE FPS for its later configs (FQDet R50-FPN, FQDetV2, DefEnc, "
        f"Swin-L, EffSeg; §4.5.1, §5.4.1). Assuming training images/s = inference images/s × "
        f"{TRAIN_OVER_INFER:.2f} (tFPS/iFPS of FQDet on the same GPU and batch, table 4.7): "
        + "; ".join(f"{name} ({table}): {ifps} → {derived[name]:.1f}"
                    for name, (ifps, table, _) in THESIS_IFPS_ONLY.items())
        + f" images/s per GPU; largest: {top_derived} (thesis {THESIS_IFPS_ONLY[top_derived][1]}, "
        f"{THESIS_IFPS_ONLY[top_derived][2]}).",
    ]
    return need, lines


# ------------------------------------------------------------------------ data
def split_annotations(root: str, split: str, num_images: int | None, workdir: str) -> tuple[str, int]:
    """The instances JSON of ``split`` (its first ``num_images`` images and their annotations
    written to ``workdir`` when fewer than all) and its number of images."""
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    with open(path) as f:
        dataset = json.load(f)
    total = len(dataset["images"])
    if num_images is None or num_images >= total:
        return path, total
    images = dataset["images"][:num_images]
    ids = {image["id"] for image in images}
    subset = dict(dataset, images=images, annotations=[a for a in dataset["annotations"] if a["image_id"] in ids])
    path = os.path.join(workdir, f"instances_{split}_first{num_images}.json")
    with open(path, "w") as f:
        json.dump(subset, f)
    return path, num_images


def warm_page_cache(annotations: str, images_dir: str) -> int:
    """Reads every image file once; returns their total bytes."""
    with open(annotations) as f:
        names = [image["file_name"] for image in json.load(f)["images"]]
    total = 0
    for name in names:
        with open(os.path.join(images_dir, name), "rb") as f:
            total += len(f.read())
    return total


def sample_order(num_images: int, seed: int, count: int) -> list[int]:
    """Source indices of training positions ``0 … count-1``: the order of
    ``msvision.data.pipeline.train_dataset`` (checked against the image ids ours yields)."""
    order = grain.MapDataset.range(num_images).seed(seed).shuffle().repeat()
    return [int(order[p]) for p in range(count)]


# ------------------------------------------------------------------------ ours
def ours_iterator(config_path: str, annotations: str, images_dir: str, batch_size: int, workers: int,
                  mode: str, seed: int):
    """``train.py``'s training iterator with the pipeline knobs set by command-line overrides."""
    overrides = [f"data.train.annotations={annotations}", f"data.train.images={images_dir}",
                 f"data.batch_size={batch_size}", "data.with_masks=False"]  # the torchvision side is boxes only
    if mode == "threads":
        overrides += [f"data.num_threads={workers}", "data.num_workers=0"]
    else:  # per worker: 1 read thread, 1 batch prefetched + grain's 1-batch queue = DataLoader's prefetch_factor 2
        overrides += ["data.num_threads=1", "data.prefetch_buffer=1", f"data.num_workers={workers}"]
    data = load_config(config_path, overrides).data
    with data.unlocked():
        data.prefetch_buffer = max(data.prefetch_buffer, data.num_threads)  # grain: buffer ≥ threads
    return build_train_iterator(data, seed=seed)


def ours_batch_stats(batch) -> tuple[list[int], int, int]:
    """Image ids, valid pixels and padded pixels of a :class:`msvision.structures.Batch`."""
    b, h, w = batch.images.shape[:3]
    return [int(i) for i in batch.image_ids], int(np.prod(batch.image_sizes, axis=1).sum()), b * h * w


# ----------------------------------------------------------------- torchvision
# DETR's datasets/transforms.py (boxes only), written with torchvision.transforms.functional.
def _detr_crop(image, target, region):
    import torch
    import torchvision.transforms.functional as F

    cropped = F.crop(image, *region)
    target = target.copy()
    i, j, h, w = region
    target["size"] = torch.tensor([h, w])
    boxes = target["boxes"] - torch.as_tensor([j, i, j, i])
    boxes = torch.min(boxes.reshape(-1, 2, 2), torch.as_tensor([w, h], dtype=torch.float32)).clamp(min=0)
    target["area"] = (boxes[:, 1, :] - boxes[:, 0, :]).prod(dim=1)
    target["boxes"] = boxes.reshape(-1, 4)
    keep = torch.all(boxes[:, 1, :] > boxes[:, 0, :], dim=1)
    for field in ("labels", "area", "iscrowd", "boxes"):
        target[field] = target[field][keep]
    return cropped, target


def _detr_hflip(image, target):
    import torch
    import torchvision.transforms.functional as F

    w, _ = image.size
    target = target.copy()
    target["boxes"] = target["boxes"][:, [2, 1, 0, 3]] * torch.as_tensor([-1, 1, -1, 1]) + torch.as_tensor([w, 0, w, 0])
    return F.hflip(image), target


def _detr_size(image_size, size, max_size):
    """DETR's get_size_with_aspect_ratio: ``(h, w)``."""
    w, h = image_size
    if max_size is not None:
        short, long = float(min(w, h)), float(max(w, h))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    return (int(size * h / w), size) if w < h else (size, int(size * w / h))


def _detr_resize(image, target, size, max_size=None):
    import torch
    import torchvision.transforms.functional as F

    size = _detr_size(image.size, size, max_size)
    resized = F.resize(image, size)
    ratio_w, ratio_h = (float(s) / float(s0) for s, s0 in zip(resized.size, image.size))
    target = target.copy()
    target["boxes"] = target["boxes"] * torch.as_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    target["area"] = target["area"] * (ratio_w * ratio_h)
    target["size"] = torch.tensor(size)
    return resized, target


class DetrTrainTransform:
    """DETR's ``make_coco_transforms('train')``: flip, RandomSelect(resize | resize-crop-resize),
    ToTensor, Normalize (boxes → normalised cxcywh)."""

    def __call__(self, image, target):
        import torch
        import torchvision.transforms as T
        import torchvision.transforms.functional as F

        if random.random() < 0.5:  # RandomHorizontalFlip()
            image, target = _detr_hflip(image, target)
        if random.random() < 0.5:  # RandomSelect(p=0.5): first branch
            image, target = _detr_resize(image, target, random.choice(DETR_SCALES), DETR_MAX_SIZE)
        else:
            image, target = _detr_resize(image, target, random.choice((400, 500, 600)))
            w = random.randint(384, min(image.width, 600))  # RandomSizeCrop(384, 600)
            h = random.randint(384, min(image.height, 600))
            image, target = _detr_crop(image, target, T.RandomCrop.get_params(image, [h, w]))
            image, target = _detr_resize(image, target, random.choice(DETR_SCALES), DETR_MAX_SIZE)
        image = F.normalize(F.to_tensor(image), mean=DETR_MEAN, std=DETR_STD)
        h, w = image.shape[-2:]
        x0, y0, x1, y1 = target["boxes"].unbind(-1)
        boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
        target["boxes"] = boxes / torch.tensor([w, h, w, h], dtype=torch.float32)
        return image, target


class DetrCocoDataset:
    """DETR's ``CocoDetection`` over training positions: item ``p`` is image ``order[p]``.

    The per-sample seeding (``random`` and torch's generator from ``(seed, p)``) is ours,
    so the draws do not depend on the number of workers; DETR draws from the worker's
    global generators.
    """

    def __init__(self, annotations: str, images_dir: str, order: list[int], seed: int):
        with open(annotations) as f:
            dataset = json.load(f)
        self.images = dataset["images"]
        per_image = {image["id"]: [] for image in self.images}
        for annotation in dataset["annotations"]:
            per_image.setdefault(annotation["image_id"], []).append(annotation)
        self.annotations = per_image
        self.images_dir, self.order, self.seed = images_dir, order, seed
        self.transform = DetrTrainTransform()

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int):
        import torch

        random.seed(self.seed * 1_000_003 + position)
        torch.manual_seed(self.seed * 1_000_003 + position)
        info = self.images[self.order[position]]
        image = Image.open(os.path.join(self.images_dir, info["file_name"])).convert("RGB")
        image, target = self.prepare(image, info)
        return self.transform(image, target)

    def prepare(self, image, info):
        """DETR's ``ConvertCocoPolysToMask`` (``return_masks=False``)."""
        import torch

        w, h = image.size
        anns = [a for a in self.annotations[info["id"]] if a.get("iscrowd", 0) == 0]
        boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        target = {
            "boxes": boxes[keep],
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)[keep],
            "image_id": torch.tensor([info["id"]]),
            "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32)[keep],
            "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64)[keep],
            "orig_size": torch.as_tensor([h, w]),
            "size": torch.as_tensor([h, w]),
        }
        return image, target


def detr_collate(batch):
    """DETR's ``util.misc.collate_fn``: images into a NestedTensor ``(tensors [B, 3, H, W] float32
    padded to the largest image, mask [B, H, W] True on padding)``, targets as a tuple."""
    import torch

    images, targets = zip(*batch)
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    tensors = torch.zeros((len(images), 3, height, width), dtype=images[0].dtype)
    mask = torch.ones((len(images), height, width), dtype=torch.bool)
    for image, padded, m in zip(images, tensors, mask):
        padded[:, :image.shape[1], :image.shape[2]].copy_(image)
        m[:image.shape[1], :image.shape[2]] = False
    return (tensors, mask), targets


def torch_iterator(annotations: str, images_dir: str, order: list[int], batch_size: int, workers: int, seed: int):
    import torch

    loader = torch.utils.data.DataLoader(
        DetrCocoDataset(annotations, images_dir, order, seed), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=detr_collate, drop_last=True)
    return iter(loader)


def torch_batch_stats(batch) -> tuple[list[int], int, int]:
    (tensors, _), targets = batch
    b, _, h, w = tensors.shape
    return ([int(t["image_id"]) for t in targets], sum(int(t["size"].prod()) for t in targets), b * h * w)


# --------------------------------------------------------------------- timing
def measure(make_iterator, stats_fn, num_batches: int, warmup: int, batch_size: int) -> dict:
    """Builds an iterator and pulls ``num_batches`` batches: seconds from building to the first
    batch, images/s from the ``warmup``-th batch to the last, image ids and pixel counts."""
    ids, valid, padded = [], 0, 0
    start = time.perf_counter()
    iterator = make_iterator()
    for k in range(num_batches):
        batch = next(iterator)
        if k == 0:
            first_s = time.perf_counter() - start
        if k == warmup - 1:
            timed_start = time.perf_counter()
        batch_ids, batch_valid, batch_padded = stats_fn(batch)
        ids += batch_ids
        valid += batch_valid
        padded += batch_padded
        del batch
    elapsed = time.perf_counter() - timed_start
    if hasattr(iterator, "close"):  # grain: stop the worker processes now, not at garbage collection
        iterator.close()
    images = num_batches * batch_size
    return dict(images_per_s=(num_batches - warmup) * batch_size / elapsed, first_s=first_s, ids=ids,
                valid_mpx=valid / images / 1e6, padded_mpx=padded / images / 1e6)


# ----------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.normpath(DEFAULT_ROOT),
                        help="COCO-format root with annotations/instances_<split>.json and <split>/")
    parser.add_argument("--split", default="train2017")
    parser.add_argument("--images", type=int, default=None, help="first N images of the split (default: all)")
    parser.add_argument("--batches", type=int, default=None,
                        help="batches per run (default: 100, or one epoch if longer; epochs reshuffle as in training)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per row, median reported (default 3)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=["threads", "processes"], choices=["threads", "processes"],
                        help="how ours is parallelised (see the module docstring)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="msvision config whose data section is used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="16 images, 16 batches, 1 repeat (under a minute)")
    parser.add_argument("--append", default=None, help="markdown file to append the table to")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = args.images or 16
        args.batches = args.batches or 16
        args.repeats = args.repeats or 1
    args.repeats = args.repeats or 3
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import jaxlib
    import jax
    import PIL
    import torch
    import torchvision

    torch.set_num_threads(1)  # DataLoader workers run with 1; the same in the main process (num_workers=0)
    load_before = os.getloadavg()[0]
    threads = len(os.sched_getaffinity(0))
    images_dir = os.path.join(args.root, args.split)
    with tempfile.TemporaryDirectory() as workdir:
        annotations, num_images = split_annotations(args.root, args.split, args.images, workdir)
        num_batches = args.batches or max(num_images // args.batch_size, 100)
        if num_batches <= 2 * max(args.workers) + 2:
            raise SystemExit(f"--batches: more than {2 * max(args.workers) + 2} (2N + 1 warm-up batches)")
        file_bytes = warm_page_cache(annotations, images_dir)
        order = sample_order(num_images, args.seed, num_batches * args.batch_size)
        with open(annotations) as f:
            ids_in_json = [image["id"] for image in json.load(f)["images"]]
        expected_ids = [ids_in_json[i] for i in order]

        runs = {}  # (side, mode, workers) -> [measure(), ...], one per repeat
        for workers in args.workers:
            warmup = 2 * workers + 1
            for _ in range(args.repeats):  # interleaved, so a change of background load hits every side
                runs.setdefault(("torchvision", "DataLoader", workers), []).append(measure(
                    lambda: torch_iterator(annotations, images_dir, order, args.batch_size, workers, args.seed),
                    torch_batch_stats, num_batches, warmup, args.batch_size))
                for mode in (args.modes if workers else args.modes[:1]):
                    runs.setdefault(("msvision", mode, workers), []).append(measure(
                        lambda: ours_iterator(args.config, annotations, images_dir, args.batch_size, workers,
                                              mode, args.seed),
                        ours_batch_stats, num_batches, warmup, args.batch_size))
    load_after = os.getloadavg()[0]

    same = all(r["ids"] == expected_ids for rs in runs.values() for r in rs)
    results = {key: dict(rs[0], images_per_s=statistics.median(r["images_per_s"] for r in rs),
                         first_s=statistics.median(r["first_s"] for r in rs)) for key, rs in runs.items()}
    need, budget_lines = gpu_host_budget()
    header = ("| pipeline | parallelism | workers | images/s | ours / torchvision | GPUs fed at "
              f"{need:.1f} img/s | first batch (s) | image Mpx (mean) | padded Mpx per image |")
    lines = [header, "|" + "---|" * 9]
    for (side, mode, workers), r in results.items():
        base = results["torchvision", "DataLoader", workers]["images_per_s"]
        ratio = "1" if side == "torchvision" else f"{r['images_per_s'] / base:.2f}×"
        knob = {"DataLoader": f"DataLoader(num_workers={workers})",
                "threads": f"grain num_threads={workers}, num_workers=0",
                "processes": f"grain num_workers={workers}, num_threads=1, prefetch_buffer=1"}[mode]
        lines.append(f"| {side} | {knob} | {workers} | {r['images_per_s']:.2f} | {ratio} | "
                     f"{r['images_per_s'] / need:.1f} | {r['first_s']:.2f} | {r['valid_mpx']:.3f} | "
                     f"{r['padded_mpx']:.3f} |")
    config_name = os.path.relpath(args.config, REPOSITORY)
    context = (f"jax {jax.__version__} / jaxlib {jaxlib.__version__}, grain {grain.__version__}, "
               f"Pillow {PIL.__version__}, numpy {np.__version__}, torch {torch.__version__}, torchvision "
               f"{torchvision.__version__}; {platform.processor() or platform.machine()}, {threads} CPU threads; "
               f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after.\n"
               f"{num_images} images of {os.path.relpath(images_dir, REPOSITORY)} ({file_bytes / 2**20:.1f} MiB of JPEG), "
               f"{num_batches} batches of {args.batch_size} per run, runs one after the other in this process, "
               f"median of {args.repeats} interleaved runs per row, images/s after 2·workers + 1 warm-up batches; "
               f"ours: {config_name} data section "
               f"(DETR augmentation, buckets); same images in the same order on every row: "
               f"{'yes' if same else 'NO'}.")
    text = context + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(budget_lines)
    print(text)
    if args.append:
        command = "JAX_PLATFORMS=cpu python benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:])
        with open(args.append, "a") as f:
            f.write(f"\n#### {time.strftime('%Y-%m-%d %H:%M')} — `{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
