"""Panoptic Quality PQ = SQ · RQ (thesis section 2.3, eqs. (2.4)–(2.5)).

The rules are those of panopticapi's ``pq_compute`` (Kirillov et al. 2019):

- a predicted and a ground-truth segment match (TP) when they have the same
  category, the ground truth is not crowd, and IoU > 0.5, where the union leaves
  out the predicted pixels that are VOID (id 0) in the ground truth;
- an unmatched non-crowd ground-truth segment is a FN; crowd segments never are;
- an unmatched prediction is a FP unless more than half of its pixels are VOID or
  in the crowd segment of its own category (the last one listed, as panopticapi);
- per category PQ = ΣIoU / (TP + ½FP + ½FN), SQ = ΣIoU / TP, RQ = TP / (TP + ½FP + ½FN),
  averaged over the categories with TP + FP + FN > 0; "Things"/"Stuff" average
  over the categories with ``isthing`` 1/0.

Segment areas are pixel counts of the id maps (panopticapi reads the ground-truth
area from the JSON, which for valid COCO panoptic data is the same number).

One image costs one ``np.unique`` (a vectorised sort) of the combined
(ground truth id, prediction id) of every pixel, whose counts are the intersection
table of all segment pairs; the rest is arithmetic on that small table.

Formats: COCO panoptic (PNG with id = R + 256·G + 256²·B, ``segments_info`` lists
of ``{"id", "category_id", "iscrowd"?}``). In memory, :class:`PanopticQuality`
takes ``[H, W]`` integer id maps directly.

    python -m msvision.evaluation.panoptic --gt-json G --gt-folder GF \\
        --pred-json P --pred-folder PF [--json] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from msvision.cli import InputError, add_verbose_flag, check_record_list, check_records, read_json, run

VOID = 0
MATCH_IOU = 0.5  # thesis §2.3: segments match when IoU > 0.5
IGNORE_FRACTION = 0.5  # unmatched prediction ignored if > 50 % VOID or same-class crowd

Image = Union[str, os.PathLike, np.ndarray]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic colour → segment id.

    Args:
      rgb: ``[H, W, 3]`` (or ``[H, W, 4]``, alpha ignored) uint8.

    Returns:
      ``[H, W]`` int32, ``R + 256·G + 256²·B``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"expected an [H, W, 3] colour image, got shape {rgb.shape}")
    rgb = rgb.astype(np.int32, copy=False)
    return rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """``[H, W]`` segment ids (< 256³) → ``[H, W, 3]`` uint8 COCO panoptic colours."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def read_id_map(image: Image) -> np.ndarray:
    """A panoptic PNG path, an ``[H, W, 3]`` colour array or an ``[H, W]`` id map → ``[H, W]`` ids."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image as PILImage

        with PILImage.open(image) as im:
            if im.mode != "RGB":
                return rgb_to_id(np.asarray(im.convert("RGB")))
            # RGBX bytes read as little-endian uint32 are R + 256·G + 256²·B + 256³·X:
            # 2–3× faster than combining three uint8 planes.
            width, height = im.size
            rgbx = np.frombuffer(im.convert("RGBX").tobytes(), "<u4").reshape(height, width)
            return (rgbx & 0xFFFFFF).view(np.int32)
    image = np.asarray(image)
    return rgb_to_id(image) if image.ndim == 3 else image


def _segment_index(ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Segment ids → ``0`` (VOID), ``1 + k`` (the k-th listed segment) or ``S + 1`` (unlisted).

    Args:
      ids: ``[N]`` int segment ids.
      segment_ids: ``[S]`` int64 listed ids (none is 0).

    Returns:
      ``[N]`` int64.
    """
    num = len(segment_ids)
    flat = np.asarray(ids, np.int64).reshape(-1)
    keys = np.concatenate([[VOID], segment_ids]).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = np.append(keys[order], -1)  # sentinel for pixels above every key
    sorted_index = np.append(order, num + 1)  # key k sits at row k: 0 VOID, 1 + j segment j
    pos = np.searchsorted(sorted_keys[:-1], flat)
    return np.where(sorted_keys[pos] == flat, sorted_index[pos], num + 1)


def _segments(segments_info: Sequence[dict], what: str) -> tuple[np.ndarray, list[int], np.ndarray]:
    seg_ids = np.array([int(s["id"]) for s in segments_info], np.int64)
    if np.any(seg_ids == VOID):
        raise ValueError(f"{what}: segment id {VOID} is reserved for VOID")
    if len(np.unique(seg_ids)) != len(seg_ids):
        raise ValueError(f"{what}: duplicate segment ids")
    crowd = np.array([bool(s.get("iscrowd", 0)) for s in segments_info], bool)
    return seg_ids, [int(s["category_id"]) for s in segments_info], crowd


class PanopticQuality:
    """Accumulates per-category TP / FP / FN / ΣIoU over images.

    Args:
      categories: the category records (``{"id", "isthing", ...}``) of the ground
        truth; every category of every segment must be among them.
    """

    def __init__(self, categories: Sequence[dict]):
        self.categories = list(categories)
        self.category_ids = np.array([int(c["id"]) for c in self.categories], np.int64)
        self.isthing = np.array([bool(c.get("isthing", 1)) for c in self.categories], bool)
        self._index = {int(c): k for k, c in enumerate(self.category_ids)}
        num = len(self.categories)
        self.iou = np.zeros(num, np.float64)
        self.tp = np.zeros(num, np.int64)
        self.fp = np.zeros(num, np.int64)
        self.fn = np.zeros(num, np.int64)
        self.num_images = 0

    def _category_index(self, category_ids: Sequence[int], what: str) -> np.ndarray:
        try:
            return np.array([self._index[c] for c in category_ids], np.int64)
        except KeyError as e:
            raise KeyError(f"{what}: unknown category_id {e.args[0]}") from None

    def add(
        self,
        gt_ids: np.ndarray,
        gt_segments: Sequence[dict],
        pred_ids: np.ndarray,
        pred_segments: Sequence[dict],
        *,
        image_id=None,
    ) -> None:
        """Add one image.

        Args:
          gt_ids: ``[H, W]`` int ground-truth segment ids (0 = VOID).
          gt_segments: ``segments_info`` of the ground truth (``id``,
            ``category_id``, ``iscrowd``); ids in ``gt_ids`` that are not listed
            take part in nothing (as in panopticapi).
          pred_ids: ``[H, W]`` int predicted segment ids (0 = no prediction).
          pred_segments: ``segments_info`` of the prediction; every non-zero id of
            ``pred_ids`` must be listed and every listed id present.
          image_id: only for error messages.
        """
        what = f"image {image_id}" if image_id is not None else "image"
        gt_ids = np.asarray(gt_ids)
        pred_ids = np.asarray(pred_ids)
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(f"{what}: ground truth {gt_ids.shape} and prediction {pred_ids.shape} differ in size")
        g_ids, g_cats, g_crowd = _segments(gt_segments, f"{what} ground truth")
        p_ids, p_cats, _ = _segments(pred_segments, f"{what} prediction")
        g_cat = self._category_index(g_cats, f"{what} ground truth")
        p_cat = self._category_index(p_cats, f"{what} prediction")
        num_g, num_p = len(g_ids), len(p_ids)

        # Intersection table: rows VOID, gt 1..G, unlisted gt; columns VOID, pred 1..P, unlisted.
        for ids, name in ((gt_ids, "ground truth"), (pred_ids, "prediction")):
            if ids.size and (ids.min() < 0 or ids.max() >= 2**31):
                raise ValueError(f"{what}: {name} segment ids must be in [0, 2**31)")
        pixel_pairs, counts = np.unique((gt_ids.astype(np.int64) << 32) | pred_ids.astype(np.int64), return_counts=True)
        gi = _segment_index(pixel_pairs >> 32, g_ids)
        pi = _segment_index(pixel_pairs & (2**32 - 1), p_ids)
        table = np.zeros((num_g + 2, num_p + 2), np.int64)
        np.add.at(table, (gi, pi), counts)
        if table[:, num_p + 1].any():
            unlisted = np.unique((pixel_pairs & (2**32 - 1))[pi == num_p + 1])
            raise KeyError(
                f"{what}: predicted segment ids {unlisted.tolist()[:10]} are in the PNG but not in segments_info"
            )
        pred_area = table[:, 1 : num_p + 1].sum(0)
        if np.any(pred_area == 0):
            absent = p_ids[pred_area == 0].tolist()[:10]
            raise KeyError(f"{what}: predicted segment ids {absent} are listed but not in the PNG")
        gt_area = table[1 : num_g + 1, :].sum(1)
        inter = table[1 : num_g + 1, 1 : num_p + 1].astype(np.float64)  # [G, P]
        pred_void = table[0, 1 : num_p + 1]  # [P] predicted pixels on ground-truth VOID

        union = pred_area[None, :] + gt_area[:, None] - inter - pred_void[None, :]
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)
        same = (g_cat[:, None] == p_cat[None, :]) & ~g_crowd[:, None]
        match = same & (iou > MATCH_IOU)  # at most one per row and column (thesis §2.3)
        g_matched = match.any(1)
        p_matched = match.any(0)
        num_c = len(self.categories)
        matched_g = np.flatnonzero(g_matched)
        self.tp += np.bincount(g_cat[matched_g], minlength=num_c)
        self.iou += np.bincount(g_cat[matched_g], weights=iou[match], minlength=num_c)
        self.fn += np.bincount(g_cat[~g_matched & ~g_crowd], minlength=num_c)

        crowd_of_category = np.full(num_c, -1, np.int64)
        for g in np.flatnonzero(g_crowd):  # the last crowd segment of a category counts
            crowd_of_category[g_cat[g]] = g
        crowd_row = crowd_of_category[p_cat]  # [P]
        on_crowd = np.where(crowd_row >= 0, inter[np.maximum(crowd_row, 0), np.arange(num_p)], 0.0)
        ignored = (pred_void + on_crowd) / np.maximum(pred_area, 1) > IGNORE_FRACTION
        self.fp += np.bincount(p_cat[~p_matched & ~ignored], minlength=num_c)
        self.num_images += 1

    def merge(self, other: "PanopticQuality") -> None:
        """Add the counts of another accumulator over the same categories."""
        if not np.array_equal(self.category_ids, other.category_ids):
            raise ValueError("cannot merge accumulators over different categories")
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.num_images += other.num_images

    def per_category(self) -> dict[int, dict[str, float]]:
        """``{category_id: {"PQ", "SQ", "RQ", "TP", "FP", "FN"}}`` for every category."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        out = {}
        for k, cat in enumerate(self.category_ids.tolist()):
            d = denom[k]
            out[cat] = {
                "PQ": self.iou[k] / d if d else 0.0,
                "SQ": self.iou[k] / self.tp[k] if self.tp[k] else 0.0,
                "RQ": self.tp[k] / d if d else 0.0,
                "TP": int(self.tp[k]),
                "FP": int(self.fp[k]),
                "FN": int(self.fn[k]),
            }
        return out

    def summary(self) -> dict[str, float]:
        """``PQ, SQ, RQ`` (all), ``*_th`` (things), ``*_st`` (stuff) as fractions, the
        numbers of categories averaged ``n, n_th, n_st`` (a mean over no category is 0),
        and the segment counts summed over those categories, ``TP, FP, FN`` with the same
        suffixes (what RQ is made of: a low RQ from missed segments or from extra ones)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        present = (self.tp + self.fp + self.fn) > 0
        safe = np.where(present, denom, 1.0)
        pq = self.iou / safe
        sq = np.divide(self.iou, self.tp, out=np.zeros_like(self.iou), where=self.tp > 0)
        rq = self.tp / safe
        out: dict[str, float] = {}
        for suffix, select in (("", np.ones_like(present)), ("_th", self.isthing), ("_st", ~self.isthing)):
            keep = present & select
            n = int(keep.sum())
            for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                out[name + suffix] = float(values[keep].mean()) if n else 0.0
            out["n" + suffix] = n
            for name, counts in (("TP", self.tp), ("FP", self.fp), ("FN", self.fn)):
                out[name + suffix] = int(counts[keep].sum())
        return out


def evaluate_panoptic(
    pairs: Iterable[tuple[Image, Sequence[dict], Image, Sequence[dict]]], categories: Sequence[dict]
) -> PanopticQuality:
    """PQ over ``(gt image, gt segments_info, pred image, pred segments_info)`` pairs.

    Each image is a panoptic PNG path, an ``[H, W, 3]`` uint8 colour array or an
    ``[H, W]`` integer id map. Returns the accumulator (``.summary()``, ``.per_category()``).
    """
    pq = PanopticQuality(categories)
    for gt_image, gt_segments, pred_image, pred_segments in pairs:
        pq.add(read_id_map(gt_image), gt_segments, read_id_map(pred_image), pred_segments)
    return pq


def _evaluate_chunk(args) -> PanopticQuality:
    jobs, categories = args
    pq = PanopticQuality(categories)
    for image_id, gt_path, gt_segments, pred_path, pred_segments in jobs:
        pq.add(read_id_map(gt_path), gt_segments, read_id_map(pred_path), pred_segments, image_id=image_id)
    return pq


def evaluate_panoptic_files(
    gt_json: Union[str, os.PathLike, dict],
    pred_json: Union[str, os.PathLike, dict],
    gt_folder: Optional[Union[str, os.PathLike]] = None,
    pred_folder: Optional[Union[str, os.PathLike]] = None,
    *,
    workers: int = 1,
) -> PanopticQuality:
    """PQ of a COCO panoptic prediction (JSON + PNG folder) against the ground truth.

    Args:
      gt_json, pred_json: COCO panoptic JSON paths or dicts; ``categories`` come
        from the ground truth, the images evaluated are its ``annotations``.
      gt_folder, pred_folder: PNG folders (default: the JSON path without ``.json``,
        as panopticapi).
      workers: threads (images are split into contiguous chunks). Threads, not
        processes: PNG decoding and numpy's sorting release the GIL, so 2 threads
        are as fast as 2 forked processes (``benchmarks/RESULTS.md``), and a process
        that runs JAX must not fork.

    Raises:
      KeyError: an image of the ground truth has no prediction, or a prediction
        is inconsistent (see :meth:`PanopticQuality.add`).
      msvision.cli.InputError: a JSON file is missing, not JSON, or not COCO panoptic.
    """

    def load(obj, what):
        if not isinstance(obj, (str, os.PathLike)):
            return obj, "<dict>"
        data = read_json(obj, what)
        for k, annotation in enumerate(check_records(data, "annotations", ("image_id", "file_name", "segments_info"),
                                                     obj)):
            check_record_list(annotation["segments_info"], f"'annotations'[{k}]['segments_info']",
                              ("id", "category_id"), obj)
        return data, os.fspath(obj)

    def folder(folder, json_path):
        if folder is not None:
            return os.fspath(folder)
        if not isinstance(json_path, (str, os.PathLike)):
            raise ValueError("a PNG folder is required when the JSON is given as a dict")
        return os.fspath(json_path)[: -len(".json")] if os.fspath(json_path).endswith(".json") else os.fspath(json_path)

    (gt, gt_name), (pred, _) = load(gt_json, "ground truth"), load(pred_json, "predictions")
    if isinstance(gt_json, (str, os.PathLike)):
        check_records(gt, "categories", ("id",), gt_name)
    gt_dir, pred_dir = folder(gt_folder, gt_json), folder(pred_folder, pred_json)
    predictions = {a["image_id"]: a for a in pred["annotations"]}
    jobs = []
    for ann in gt["annotations"]:
        p = predictions.get(ann["image_id"])
        if p is None:
            raise KeyError(f"no prediction for the image with id {ann['image_id']}")
        jobs.append(
            (
                ann["image_id"],
                os.path.join(gt_dir, ann["file_name"]),
                ann["segments_info"],
                os.path.join(pred_dir, p["file_name"]),
                p["segments_info"],
            )
        )
    categories = gt["categories"]
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        return _evaluate_chunk((jobs, categories))
    chunks = [list(c) for c in np.array_split(np.arange(len(jobs)), workers)]
    total = PanopticQuality(categories)
    with ThreadPoolExecutor(workers) as pool:
        for part in pool.map(_evaluate_chunk, [([jobs[i] for i in c], categories) for c in chunks]):
            total.merge(part)
    return total


def format_table(summary: dict[str, float]) -> str:
    """panopticapi's table: PQ, SQ, RQ (in %) and the number of categories."""
    lines = [f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}", "-" * 38]
    for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        lines.append(
            f"{name:10s}| {100 * summary['PQ' + suffix]:5.1f}  {100 * summary['SQ' + suffix]:5.1f}  "
            f"{100 * summary['RQ' + suffix]:5.1f} {summary['n' + suffix]:5d}"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(_main, argv, prog="python -m msvision.evaluation.panoptic")


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m msvision.evaluation.panoptic",
        description="Panoptic Quality of COCO panoptic predictions (panopticapi's pq_compute rules).",
    )
    parser.add_argument("--gt-json", required=True)
    parser.add_argument("--gt-folder", help="ground-truth PNGs (default: --gt-json without .json)")
    parser.add_argument("--pred-json", required=True)
    parser.add_argument("--pred-folder", help="predicted PNGs (default: --pred-json without .json)")
    parser.add_argument("--workers", type=int, default=1, help="threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object of fractions")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    try:
        pq = evaluate_panoptic_files(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                                     workers=args.workers)
    except (KeyError, ValueError) as e:  # a prediction that does not fit the ground truth
        if isinstance(e, InputError):
            raise
        raise InputError(f"{args.pred_json}: {e.args[0] if e.args else e}") from e
    summary = pq.summary()
    print(json.dumps(summary) if args.json else format_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
