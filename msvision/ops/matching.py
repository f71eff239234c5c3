"""Matching predictions/anchors to padded ground truth, one image per call.

All functions take a quality matrix with one row per anchor (or query) and one
column per ground-truth slot, ``[N, M]``, plus ``gt_valid [M] bool`` marking real
slots (padding slots never match). ``vmap`` them over the batch.

- :func:`absolute_iou_matching`: fixed IoU thresholds (Faster R-CNN / RetinaNet,
  detectron2 ``Matcher`` semantics).
- :func:`topk_anchor_matching`: static top-k (thesis ch. 4; the author's ``SimMatcher``,
  DetSeg ``models/modules/matcher.py``), plus
  :func:`topk_candidates_per_gt` / :func:`topk_matching_from_candidates` for the
  FQDet head, whose queries are a selected subset of the anchors.
- :func:`hungarian_matching`: exact one-to-one matching via scipy in a
  ``jax.pure_callback`` (host), and :func:`auction_matching`, an
  epsilon-scaled auction algorithm that stays on the device.

Crowd ground truth (COCO ``iscrowd``) is never a positive target. detectron2 and
torchvision simply drop crowd annotations for training; Detectron (v1) ignores
proposals whose intersection-over-proposal-area with a crowd box exceeds
``CROWD_FILTER_THRESH = 0.7``, and mmdet's ``ignore_iof_thr`` does the same when
enabled. We follow Detectron: :func:`crowd_ignore_mask` with default 0.7.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

DEFAULT_CROWD_IOA_THRESHOLD = 0.7  # Detectron's TRAIN.CROWD_FILTER_THRESH


def _real_gt(gt_valid: Array, gt_is_crowd: Optional[Array]) -> Array:
    real = gt_valid.astype(bool)
    if gt_is_crowd is not None:
        real = real & ~gt_is_crowd.astype(bool)
    return real


def crowd_ignore_mask(
    crowd_ioa: Array,
    gt_valid: Array,
    gt_is_crowd: Array,
    threshold: float = DEFAULT_CROWD_IOA_THRESHOLD,
) -> Array:
    """Anchors lying mostly inside a crowd region.

    Args:
      crowd_ioa: ``[N, M]`` intersection over anchor area
        (:func:`msvision.ops.boxes.box_ioa` of anchors and gt boxes).
      gt_valid, gt_is_crowd: ``[M]`` bool.
      threshold: ignore an anchor when its IoA with a valid crowd box is ``> threshold``.

    Returns:
      ``[N]`` bool, True for anchors to ignore (neither positive nor negative).
    """
    crowd = gt_valid.astype(bool) & gt_is_crowd.astype(bool)
    return jnp.any((crowd_ioa > threshold) & crowd[None, :], axis=1)


def absolute_iou_matching(
    iou: Array,
    gt_valid: Array,
    *,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    allow_low_quality: bool = True,
    gt_is_crowd: Optional[Array] = None,
    crowd_ioa: Optional[Array] = None,
    crowd_ioa_threshold: float = DEFAULT_CROWD_IOA_THRESHOLD,
) -> tuple[Array, Array]:
    """IoU-threshold matching with detectron2 ``Matcher`` semantics (one image).

    Each anchor takes its highest-IoU real gt (first gt on ties). Label 1 if that
    IoU is ``>= pos_iou``, -1 (ignore) if in ``[neg_iou, pos_iou)``, 0 if ``< neg_iou``.
    With ``allow_low_quality``, for every real gt the anchors whose IoU equals that
    gt's maximum IoU become positive too (ties included); as in detectron2 their
    matched gt stays their own argmax gt. Unlike detectron2 a gt whose maximum IoU
    is 0 creates no low-quality matches (detectron2 would mark every anchor with
    IoU 0 positive). Finally anchors inside crowd regions (see
    :func:`crowd_ignore_mask`) that are not positive are ignored.

    Args:
      iou: ``[N, M]`` IoU of anchors (rows) with gt boxes (columns).
      gt_valid: ``[M]`` bool, real gt slots.
      pos_iou, neg_iou: thresholds (RetinaNet 0.5 / 0.4; Faster R-CNN RPN 0.7 / 0.3).
      allow_low_quality: add the low-quality matches described above.
      gt_is_crowd: optional ``[M]`` bool; crowd gts never match.
      crowd_ioa: optional ``[N, M]`` intersection over anchor area, used with
        ``gt_is_crowd`` to ignore anchors in crowd regions.
      crowd_ioa_threshold: IoA above which an anchor is ignored.

    Returns:
      matched_gt: ``[N]`` int32 gt index (0 when there is no real gt; read with
        ``match_label``).
      match_label: ``[N]`` int32, 1 positive, 0 negative, -1 ignore.
    """
    real = _real_gt(gt_valid, gt_is_crowd)
    q = jnp.where(real[None, :], iou, -1.0)
    matched_gt = jnp.argmax(q, axis=1).astype(jnp.int32)
    max_iou = jnp.max(q, axis=1)
    label = jnp.where(max_iou >= pos_iou, 1, jnp.where(max_iou >= neg_iou, -1, 0))
    label = jnp.where(jnp.any(real), label, 0).astype(jnp.int32)
    if allow_low_quality:
        best_per_gt = jnp.max(q, axis=0)  # [M]
        low_quality = (q == best_per_gt[None, :]) & real[None, :] & (best_per_gt[None, :] > 0)
        label = jnp.where(jnp.any(low_quality, axis=1), 1, label)
    if gt_is_crowd is not None and crowd_ioa is not None:
        ignore = crowd_ignore_mask(crowd_ioa, gt_valid, gt_is_crowd, crowd_ioa_threshold)
        label = jnp.where(ignore & (label != 1), -1, label)
    return matched_gt, label


def topk_candidates_per_gt(
    iou: Array, gt_valid: Array, k: int, *, gt_is_crowd: Optional[Array] = None
) -> tuple[Array, Array, Array]:
    """The ``k`` anchors of highest IoU with each gt (no minimum IoU).

    Args:
      iou: ``[N, M]`` IoU of anchors with gt boxes.
      gt_valid: ``[M]`` bool; gt_is_crowd: optional ``[M]`` bool.
      k: static number of candidates per gt. If ``k > N`` the last ``k - N``
        slots are invalid.

    Returns:
      indices: ``[M, k]`` int32 anchor indices by descending IoU (ties: lower
        anchor index first).
      candidate_iou: ``[M, k]`` their IoU.
      candidate_valid: ``[M, k]`` bool, False for padded / crowd gts and ``k > N`` slots.
    """
    n = iou.shape[0]
    kk = min(k, n)
    values, indices = jax.lax.top_k(iou.T, kk)  # [M, kk]
    if kk < k:
        values = jnp.pad(values, ((0, 0), (0, k - kk)))
        indices = jnp.pad(indices, ((0, 0), (0, k - kk)))
    real = _real_gt(gt_valid, gt_is_crowd)
    cand_valid = real[:, None] & (jnp.arange(k) < kk)[None, :]
    return indices.astype(jnp.int32), values, cand_valid


def _resolve_by_rank(rank: Array, quality: Array, k: int) -> tuple[Array, Array]:
    """Per row pick the column of best (lowest) rank < k; ties: higher quality, lower column."""
    min_rank = jnp.min(rank, axis=1, keepdims=True)
    positive = min_rank[:, 0] < k
    cand = rank == min_rank
    q = jnp.where(cand, quality, -jnp.inf)
    cand = cand & (q == jnp.max(q, axis=1, keepdims=True))
    matched = jnp.argmax(cand, axis=1).astype(jnp.int32)
    return jnp.where(positive, matched, 0), positive


def topk_anchor_matching(
    iou: Array, gt_valid: Array, k: int, *, gt_is_crowd: Optional[Array] = None
) -> tuple[Array, Array]:
    """Static top-k matching (thesis ch. 4, FQDet selector with k=5).

    For every real (valid, non-crowd) gt its ``k`` anchors of highest IoU are
    positive, without a minimum IoU. An anchor in several gts' top-k keeps the gt
    where its rank is best; ties go to the higher IoU, then the lower gt index.
    Every other anchor is negative (no ignore region, as the author's code; use
    :func:`crowd_ignore_mask` to additionally ignore anchors in crowd regions).

    Args:
      iou: ``[N, M]`` IoU of anchors with gt boxes.
      gt_valid: ``[M]`` bool; k: static; gt_is_crowd: optional ``[M]`` bool.

    Returns:
      matched_gt: ``[N]`` int32 (0 for negatives); positive: ``[N]`` bool.
    """
    n, m = iou.shape
    indices, _, cand_valid = topk_candidates_per_gt(iou, gt_valid, k, gt_is_crowd=gt_is_crowd)
    ranks = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32)[None, :], (m, k))
    rows = jnp.where(cand_valid, indices, n)  # invalid candidates scatter out of bounds
    cols = jnp.broadcast_to(jnp.arange(m)[:, None], (m, k))
    rank = jnp.full((n, m), k, jnp.int32).at[rows, cols].set(ranks, mode="drop")
    return _resolve_by_rank(rank, iou, k)


def topk_matching_from_candidates(
    candidates: Array,
    candidate_valid: Array,
    query_anchor_ids: Array,
    query_iou: Array,
    *,
    query_valid: Optional[Array] = None,
) -> tuple[Array, Array]:
    """Top-k matching of a selected subset of anchors (FQDet head, k=15).

    The per-gt candidates are computed over *all* anchors
    (:func:`topk_candidates_per_gt`); a query (a selected anchor) is positive for a
    gt when its anchor is among that gt's candidates; a query in several gts'
    lists keeps the gt where its rank is best (ties: higher ``query_iou``, then
    lower gt index). The author's ``TopMatcher`` (DetSeg ``models/modules/matcher.py``).

    Args:
      candidates: ``[M, k]`` int32 anchor indices; candidate_valid: ``[M, k]`` bool.
      query_anchor_ids: ``[Q]`` int32 index of each query's anchor.
      query_iou: ``[Q, M]`` IoU of the query prior boxes with the gt boxes.
      query_valid: optional ``[Q]`` bool.

    Returns:
      matched_gt: ``[Q]`` int32 (0 for negatives); positive: ``[Q]`` bool.
    """
    k = candidates.shape[1]
    hit = (query_anchor_ids[:, None, None] == candidates[None]) & candidate_valid[None]  # [Q, M, k]
    rank = jnp.min(jnp.where(hit, jnp.arange(k, dtype=jnp.int32), k), axis=2)  # [Q, M]
    if query_valid is not None:
        rank = jnp.where(query_valid[:, None], rank, k)
    return _resolve_by_rank(rank, query_iou, k)


# --------------------------------------------------------------------------- Hungarian


def _lsa_host(cost: np.ndarray, gt_valid: np.ndarray) -> np.ndarray:
    """Host callback: ``cost [..., N, M]``, ``gt_valid [..., M]`` -> matched ``[..., N]`` (-1 none)."""
    from scipy.optimize import linear_sum_assignment

    cost = np.asarray(cost, np.float64)
    gt_valid = np.asarray(gt_valid, bool)
    lead = cost.shape[:-2]
    n, m = cost.shape[-2:]
    cost = cost.reshape(-1, n, m)
    gt_valid = np.broadcast_to(gt_valid, lead + (m,)).reshape(-1, m)
    out = np.full((cost.shape[0], n), -1, np.int32)
    for b in range(cost.shape[0]):
        cols = np.flatnonzero(gt_valid[b])
        if cols.size == 0 or n == 0:
            continue
        sub = cost[b][:, cols]
        finite = np.isfinite(sub)
        if not finite.all():  # scipy rejects inf/NaN: make them the worst choice
            big = np.abs(sub[finite]).max(initial=0.0) * 2 * max(n, m) + 1.0
            sub = np.where(np.isnan(sub) | (sub == np.inf), big, np.where(sub == -np.inf, -big, sub))
        rows, c = linear_sum_assignment(sub)
        out[b, rows] = cols[c]
    return out.reshape(lead + (n,))


def hungarian_matching(cost: Array, gt_valid: Array) -> tuple[Array, Array]:
    """Exact minimum-cost one-to-one matching (scipy, on the host).

    ``scipy.optimize.linear_sum_assignment`` runs in a ``jax.pure_callback``
    (``vmap_method="broadcast_all"``: a vmapped call makes one host call for the
    whole batch). No gradient flows into ``cost`` (it is ``stop_gradient``-ed).
    Each real gt is matched to one prediction when ``N >= #real gts``; otherwise
    every prediction is matched.

    Args:
      cost: ``[N, M]`` float, predictions (rows) x gt slots (columns). Non-finite
        entries are treated as very expensive.
      gt_valid: ``[M]`` bool; padded slots are excluded.

    Returns:
      matched_gt: ``[N]`` int32 (0 where not positive); positive: ``[N]`` bool.
    """
    n = cost.shape[0]
    cost = jax.lax.stop_gradient(cost)
    out_type = jax.ShapeDtypeStruct((n,), jnp.int32)
    matched = jax.pure_callback(
        _lsa_host, out_type, cost, gt_valid.astype(bool), vmap_method="broadcast_all"
    )
    positive = matched >= 0
    return jnp.where(positive, matched, 0).astype(jnp.int32), positive


def auction_matching(
    cost: Array,
    gt_valid: Array,
    *,
    eps: Optional[float] = None,
    max_iterations: int = 100_000,
) -> tuple[Array, Array]:
    """Minimum-cost matching on the device by an auction algorithm (Jacobi forward auction, Bertsekas): the in-graph alternative to the exact :func:`hungarian_matching`.

    The real gts bid for predictions; each round every unassigned gt bids
    ``price + (best - second best net value) + eps`` on its best prediction and each
    prediction goes to its highest bidder (the previous owner becomes unassigned).
    Starting from zero prices, unassigned predictions keep price 0, which makes the
    final assignment ``eps``-optimal for this asymmetric problem: with costs rescaled
    to values in ``[0, 1]`` by their range ``R`` over real gts, the total cost is
    within ``M * eps * R`` of the optimum (so it is the exact optimum whenever the
    optimum beats every other assignment by more than that). No epsilon scaling:
    carried-over prices would break optimality for ``N > M``.

    Needs ``N >= M`` (more queries than gt slots, the DETR setting). Runs in a
    ``while_loop`` (``max_iterations`` bidding rounds at most). Zero gradient.

    Args:
      cost: ``[N, M]`` float, predictions x gt slots (non-finite = forbidden).
      gt_valid: ``[M]`` bool.
      eps: bid increment in rescaled units; default ``min(1e-3, 0.1 / M)``.
        Smaller is more exact and slower (rounds grow like ``1 / eps``).

    Returns:
      matched_gt: ``[N]`` int32 (0 where not positive); positive: ``[N]`` bool.
    """
    n, m = cost.shape
    if m > n:
        raise ValueError(f"auction_matching needs N >= M, got cost of shape {cost.shape}")
    if n == 0 or m == 0:
        return jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool)
    eps = min(1e-3, 0.1 / m) if eps is None else float(eps)
    cost = jax.lax.stop_gradient(cost).astype(jnp.float32)
    real = gt_valid.astype(bool)
    finite = jnp.isfinite(cost) & real[None, :]
    any_finite = jnp.any(finite)
    cmax = jnp.where(any_finite, jnp.max(jnp.where(finite, cost, -jnp.inf)), 1.0)
    cmin = jnp.where(any_finite, jnp.min(jnp.where(finite, cost, jnp.inf)), 0.0)
    span = jnp.maximum(cmax - cmin, 1e-12)
    # value[j, i]: benefit of gt j for prediction i, in [0, 1]; forbidden pairs -1.
    value = jnp.where(finite, (cmax - jnp.where(finite, cost, 0.0)) / span, -1.0).T  # [M, N]
    objects = jnp.arange(n, dtype=jnp.int32)

    def cond(state):
        _, _, assigned, it = state
        return jnp.any(real & (assigned < 0)) & (it < max_iterations)

    def body(state):
        prices, owner, assigned, it = state
        net = value - prices[None, :]  # [M, N]
        if n >= 2:
            top2, idx2 = jax.lax.top_k(net, 2)
            best_obj, increment = idx2[:, 0], top2[:, 0] - top2[:, 1]
        else:
            best_obj, increment = jnp.zeros((m,), jnp.int32), jnp.ones((m,), net.dtype)
        bid = prices[best_obj] + increment + eps
        bidding = real & (assigned < 0)
        bids = jnp.where(
            bidding[:, None] & (best_obj[:, None] == objects[None, :]), bid[:, None], -jnp.inf
        )  # [M, N]
        win_bid = jnp.max(bids, axis=0)
        has_bid = win_bid > -jnp.inf
        winner = jnp.argmax(bids, axis=0).astype(jnp.int32)  # ties: lowest gt index
        assigned = assigned.at[jnp.where(has_bid & (owner >= 0), owner, m)].set(-1, mode="drop")
        assigned = assigned.at[jnp.where(has_bid, winner, m)].set(objects, mode="drop")
        owner = jnp.where(has_bid, winner, owner)
        prices = jnp.where(has_bid, win_bid, prices)
        return prices, owner, assigned, it + 1

    init = (
        jnp.zeros((n,), jnp.float32),
        jnp.full((n,), -1, jnp.int32),
        jnp.full((m,), -1, jnp.int32),
        jnp.int32(0),
    )
    _, owner, _, _ = jax.lax.while_loop(cond, body, init)
    positive = owner >= 0
    return jnp.where(positive, owner, 0).astype(jnp.int32), positive
