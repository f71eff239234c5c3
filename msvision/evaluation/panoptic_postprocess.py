"""Panoptic post-processing of RoI-based instance predictions (thesis §5.4.1).

The released code's version is ``BaseSegHead.compute_segs`` (DetSeg
``models/heads/seg/base.py``, ``seg_type='panoptic'``); differences are noted below.

Stuff is predicted like things (box + mask per query, thesis §5.5). The detector gives one
label per query (its best class, score ``s`` = that sigmoid), top 1000, class-aware
box NMS at 0.5 and no top-100 cap (``model.head.inference``), and the segmentation head
gives mask probabilities ``p`` for every survivor (no mask-score weighting). Then, per
image at the network-input resolution:

1. drop the predictions with ``s < score_threshold`` (0.3);
2. mask NMS on ``p > 0.5`` in score order: drop a mask whose IoU with ANY higher-scored
   mask is ``≥ mask_nms_iou`` (0.75), even when that mask was itself dropped
   (the released code's matrix form);
3. every pixel goes to the mask of highest ``s·p``; it is void when that maximum
   is below ``void_threshold`` (0.35; ``void_rule='max_score'``, the thesis) or, with
   ``void_rule='winner_prob'`` (the released code), when the winner's own
   ``p ≤ void_threshold``;
4. drop a prediction when IoU(its region, its ``p > 0.5`` mask) ``< overlap_iou``
   (0.6): its pixels become void;
5. drop a prediction whose region has fewer than ``min_area`` pixels (150),
   counted at the network input;
6. merge the segments of one stuff label into one segment, score = their mean.

Output: the id map resized to the original image size by nearest neighbour (as the
released code; PyTorch's ``interpolate(mode='nearest')``: source index ``⌊dst · in / out⌋``) and
COCO panoptic ``segments_info`` (segments a resize erased are left out).

Why numpy on the host rather than jit: it runs after the jitted predict step on the
gathered detections, like the COCO mask pasting; the surviving masks (``s ≥ 0.3``,
usually tens) are pasted only there, at each image's own size, so neither a Q-mask
full-image buffer (300 × 800 × 1333 floats) nor a static segment capacity (e.g. the
best 100) is needed, and each step is a small function tested on hand-made cases.
The comparisons follow the thesis's wording (``<`` 0.3, ``<`` 0.6, fewer than 150);
the released code uses ``≤`` in steps 1, 4 and 5.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from msvision.evaluation.masks import pasted_windows

VOID_RULES = ("max_score", "winner_prob")


@dataclasses.dataclass(frozen=True)
class PanopticPostProcess:
    """The six steps (module docstring); config section ``eval.panoptic``.

    Attributes:
      score_threshold: step 1 (0.3).
      mask_nms_iou: step 2 (0.75).
      mask_threshold: foreground of ``p`` for masks (0.5, the released code's ``mask_thr``).
      void_threshold: step 3 (0.35).
      void_rule: ``'max_score'`` (thesis: void if max ``s·p`` < threshold) or
        ``'winner_prob'`` (released code: void if the winner's ``p`` ≤ threshold).
      overlap_iou: step 4 (0.6).
      min_area: step 5, pixels at the network input (150).
      merge_stuff: step 6.
    """

    score_threshold: float = 0.3
    mask_nms_iou: float = 0.75
    mask_threshold: float = 0.5
    void_threshold: float = 0.35
    void_rule: str = "max_score"
    overlap_iou: float = 0.6
    min_area: int = 150
    merge_stuff: bool = True

    def __post_init__(self):
        if self.void_rule not in VOID_RULES:
            raise ValueError(f"eval.panoptic.void_rule must be one of {VOID_RULES}, got {self.void_rule!r}")

    def __call__(self, probs: np.ndarray, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                 input_size: tuple[int, int], orig_size: Optional[tuple[int, int]] = None, *,
                 label_is_thing: Sequence[bool], label_to_category: Sequence[int]
                 ) -> tuple[np.ndarray, list[dict]]:
        """One image's panoptic segmentation.

        Args:
          probs: ``[K, Sh, Sw]`` float mask probabilities of the valid predictions, each
            on the grid over its box (``Detections.masks``; or K grids of any shapes).
          boxes: ``[K, 4]`` float ``(x0, y0, x1, y1)`` the box of each grid, in pixels of
            the network input (``Detections.mask_boxes`` scaled back to the input).
          scores: ``[K]`` float class scores ``s``; labels: ``[K]`` int contiguous labels.
          input_size: ``(h, w)`` of the image at the network input (inside the padding).
          orig_size: ``(h, w)`` of the original image (default: ``input_size``).
          label_is_thing: ``[num_classes]`` bool; label_to_category: ``[num_classes]``
            dataset category ids.

        Returns:
          ``ids [h0, w0] int32`` (0 = void, segments 1..n in descending score) and the
          ``segments_info`` list (``id``, ``category_id``, ``iscrowd`` 0, ``isthing``,
          ``score``, ``area``, ``bbox`` [x, y, w, h] at the original size).
        """
        height, width = (int(v) for v in input_size)
        scores = np.asarray(scores, np.float64).reshape(-1)
        labels = np.asarray(labels, np.int64).reshape(-1)
        keep = np.flatnonzero(scores >= self.score_threshold)  # step 1: drop s < 0.3
        keep = keep[np.argsort(-scores[keep], kind="stable")]  # score order for the steps below
        scores, labels = scores[keep], labels[keep]
        prob_maps = paste_probs([probs[i] for i in keep], np.asarray(boxes).reshape(-1, 4)[keep], height, width)
        masks = prob_maps > self.mask_threshold
        survivors = mask_nms(masks, self.mask_nms_iou)  # step 2
        scores, labels, prob_maps, masks = scores[survivors], labels[survivors], prob_maps[survivors], masks[survivors]
        winner = assign_pixels(prob_maps, scores, self.void_threshold, self.void_rule)  # step 3
        del prob_maps
        keep = overlap_filter(winner, masks, self.overlap_iou)  # step 4
        keep &= np.bincount(winner[winner >= 0], minlength=len(scores)) >= self.min_area  # step 5
        is_thing = np.asarray(label_is_thing, bool)[labels] if len(labels) else np.zeros(0, bool)
        segment_of, segment_scores, segment_labels = group_segments(keep, labels, scores, is_thing,
                                                                    self.merge_stuff)  # step 6
        ids = np.where(winner >= 0, segment_of[np.maximum(winner, 0)], 0) if len(scores) else np.zeros_like(winner)
        if orig_size is not None:
            ids = resize_nearest(ids, orig_size)
        return ids.astype(np.int32), segments_info(ids, segment_scores, segment_labels, label_is_thing,
                                                   label_to_category)


def paste_probs(probs: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``probs [K, Sh, Sw]`` (or K grids of their own shapes) on ``boxes [K, 4]`` ``(x0, y0, x1, y1)``
    pixels → ``[K, height, width]`` float32.

    mmdet's ``_do_paste_mask`` (the interpolation of
    :func:`msvision.evaluation.masks.paste_masks_numpy`, without the threshold): pixel
    ``(i, j)`` reads the grid at ``u = (j + 0.5 − x0) / (x1 − x0) · Sw − 0.5`` (``v``
    likewise) bilinearly, zero outside the grid.
    """
    out = np.zeros((len(np.asarray(boxes).reshape(-1, 4)), height, width), np.float32)
    for i, rows, cols, values in pasted_windows(probs, boxes, height, width):
        out[i, rows, cols] = values
    return out


def mask_iou_matrix(masks: np.ndarray) -> np.ndarray:
    """``masks [K, H, W] bool`` → ``[K, K]`` float64 pairwise IoU (0 where the union is empty).

    Intersections are popcounts of the AND of bit-packed masks (a binary matmul
    without floating point: ``K² · H · W / 8`` byte operations).
    """
    k = masks.shape[0]
    packed = np.packbits(masks.reshape(k, int(np.prod(masks.shape[1:]))), axis=1)
    inter = np.zeros((k, k), np.float64)
    for i in range(k):
        inter[i, i:] = np.bitwise_count(packed[i] & packed[i:]).sum(1, dtype=np.int64)
    inter = np.triu(inter) + np.triu(inter, 1).T
    area = np.diag(inter).copy()
    union = area[:, None] + area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mask_nms(masks: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Non-greedy mask NMS (step 2, the released code's matrix form).

    Args:
      masks: ``[K, H, W] bool`` in DESCENDING score order.

    Returns:
      ``[K] bool`` keep: mask ``j`` is dropped when ``IoU(i, j) ≥ iou_threshold`` for some
      ``i < j``, whether or not ``i`` itself is kept.
    """
    k = masks.shape[0]
    iou = mask_iou_matrix(masks)
    higher = np.tril(np.ones((k, k), bool), -1)  # [j, i]: i ranks above j
    return ~np.any((iou >= iou_threshold) & higher, axis=1)


def assign_pixels(probs: np.ndarray, scores: np.ndarray, void_threshold: float,
                  void_rule: str = "max_score") -> np.ndarray:
    """Non-overlapping regions (step 3).

    Args:
      probs: ``[K, H, W]`` float mask probabilities ``p``; scores: ``[K]`` class scores ``s``,
        descending (a tie goes to the higher-ranked mask).
      void_rule: ``'max_score'`` void where ``max_k s_k·p_k < void_threshold`` (thesis);
        ``'winner_prob'`` void where the winner's ``p ≤ void_threshold`` (released code).

    Returns:
      ``[H, W] int64`` index of the winning mask, ``-1`` = void.
    """
    k, height, width = probs.shape
    if k == 0:
        return np.full((height, width), -1, np.int64)
    weighted = probs * np.asarray(scores, np.float32)[:, None, None]
    winner = np.argmax(weighted, axis=0)
    if void_rule == "max_score":
        void = np.take_along_axis(weighted, winner[None], 0)[0] < void_threshold
    elif void_rule == "winner_prob":
        void = np.take_along_axis(probs, winner[None], 0)[0] <= void_threshold
    else:
        raise ValueError(f"void_rule must be one of {VOID_RULES}, got {void_rule!r}")
    return np.where(void, -1, winner).astype(np.int64)


def overlap_filter(winner: np.ndarray, masks: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Step 4: ``[K] bool`` keep when IoU(region ``winner == k``, ``masks[k]``) ≥ threshold.

    Args:
      winner: ``[H, W] int`` from :func:`assign_pixels`; masks: ``[K, H, W] bool`` (``p > 0.5``).
    """
    k = masks.shape[0]
    flat_w = winner.reshape(-1)
    flat_m = masks.reshape(k, flat_w.size)
    region_area = np.bincount(flat_w[flat_w >= 0], minlength=k).astype(np.float64)
    mask_area = flat_m.sum(1).astype(np.float64)
    inside = flat_w >= 0
    inter = np.zeros(k, np.float64)
    if inside.any():
        pix = np.flatnonzero(inside)
        owner = flat_w[pix]
        inter = np.bincount(owner, weights=flat_m[owner, pix], minlength=k).astype(np.float64)
    union = region_area + mask_area - inter
    iou = np.divide(inter, union, out=np.zeros(k), where=union > 0)
    return iou >= iou_threshold


def group_segments(keep: np.ndarray, labels: np.ndarray, scores: np.ndarray, is_thing: np.ndarray,
                   merge_stuff: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment ids of the kept predictions (step 6).

    Args:
      keep: ``[K] bool``; labels, scores, is_thing: ``[K]`` of the predictions (descending score).

    Returns:
      ``segment_of [K] int64`` (1-based segment id, 0 for dropped predictions), and per
      segment ``scores [n]`` (stuff merged: the mean) and ``labels [n]``. Segments are
      numbered in the order of their best prediction.
    """
    k = len(keep)
    segment_of = np.zeros(k, np.int64)
    members: list[list[int]] = []
    stuff_segment: dict[int, int] = {}
    for i in range(k):
        if not keep[i]:
            continue
        if merge_stuff and not is_thing[i] and int(labels[i]) in stuff_segment:
            index = stuff_segment[int(labels[i])]
        else:
            index = len(members)
            members.append([])
            if not is_thing[i]:
                stuff_segment[int(labels[i])] = index
        members[index].append(i)
        segment_of[i] = index + 1
    seg_scores = np.array([np.mean(scores[m]) for m in members], np.float64)
    seg_labels = np.array([int(labels[m[0]]) for m in members], np.int64)
    return segment_of, seg_scores, seg_labels


def resize_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[h, w]`` → ``[H, W]`` by nearest neighbour, PyTorch ``interpolate(mode='nearest')``:
    output row ``i`` reads input row ``min(⌊i · h / H⌋, h − 1)`` (columns alike)."""
    h, w = ids.shape
    out_h, out_w = (int(v) for v in size)
    rows = np.minimum((np.arange(out_h) * (h / out_h)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(out_w) * (w / out_w)).astype(np.int64), w - 1)
    return ids[rows[:, None], cols[None, :]]


def segments_info(ids: np.ndarray, scores: np.ndarray, labels: np.ndarray, label_is_thing: Sequence[bool],
                  label_to_category: Sequence[int]) -> list[dict]:
    """COCO panoptic ``segments_info`` of the segments ``1..n`` present in ``ids [H, W]``."""
    n = len(scores)
    area = np.bincount(ids.reshape(-1), minlength=n + 1)
    out = []
    for s in range(1, n + 1):
        if area[s] == 0:  # erased by the resize
            continue
        ys, xs = np.nonzero(np.any(ids == s, axis=1)), np.nonzero(np.any(ids == s, axis=0))
        y0, y1 = int(ys[0][0]), int(ys[0][-1])
        x0, x1 = int(xs[0][0]), int(xs[0][-1])
        label = int(labels[s - 1])
        out.append({"id": s, "category_id": int(label_to_category[label]), "iscrowd": 0,
                    "isthing": int(bool(label_is_thing[label])), "score": float(scores[s - 1]),
                    "area": int(area[s]), "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1]})
    return out


__all__ = ["PanopticPostProcess", "paste_probs", "mask_iou_matrix", "mask_nms", "assign_pixels", "overlap_filter",
           "group_segments", "resize_nearest", "segments_info"]
