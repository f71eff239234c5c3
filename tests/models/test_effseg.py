"""EffSeg head (thesis 5.3): output shapes and capacities, losses against numpy from the masks,
SPS with every cell active against the dense computation, training-RoI overflow.

Every head compile costs seconds on the CPU: the default selection runs the shapes and
overflow tests; the oracle comparisons through the whole head are ``slow``
(``python -m pytest -m slow tests/models/test_effseg.py``)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msvision.models.abstract import abstract_init
from msvision.models.heads.effseg import EffSegCriterion, EffSegHead
from msvision.models.heads.roi_mask.rois import positive_priority, select_train_rois
from msvision.structures import Batch, QueryOutputs

C = 16  # tiny pyramid width
LEVELS = (2, 3, 4, 5)
CANVAS = 64


@functools.lru_cache(maxsize=None)
def _build(items):
    kw = dict(items)
    graphdef, abstract = nnx.split(abstract_init(lambda: EffSegHead(levels=LEVELS, channels=C, **kw,
                                                                    rngs=nnx.Rngs(0))))
    # Random parameters drawn on the host (nothing to compile; these tests compare computations,
    # not initialisations): N(0, 1/fan_in) kernels, N(0, 0.1²) biases.
    rng = np.random.default_rng(0)

    def draw(x):
        fan_in = math.prod(x.shape[:-1]) if len(x.shape) > 1 else 100
        return jnp.asarray(rng.normal(size=x.shape) / math.sqrt(fan_in), x.dtype)

    return graphdef, jax.tree.map(draw, abstract)


def build(**kw):
    """A tiny head with random parameters, cached per configuration: the parameters do not
    depend on K, the training-RoI capacity or the loss settings (same shapes, same draws)."""
    return _build(tuple(sorted(kw.items())))


def make_pyramid(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    return {l: jnp.asarray(rng.normal(size=(batch, CANVAS >> l, CANVAS >> l, C)), jnp.float32) for l in LEVELS}


IMAGE_SIZES = np.array([[64, 64], [50, 58]], np.int32)
BOXES = np.array([[[4, 6, 40, 50], [10, 0, 61, 30], [0, 0, 1, 1]],
                  [[20, 20, 31, 33], [5, 3, 56, 47], [30, 10, 44, 30]]], np.float32)
ROI_VALID = np.array([[True, True, False], [True, True, True]])


@functools.partial(jax.jit, static_argnums=0)
def _run_head(graphdef, state, pyramid, image_sizes, queries, boxes, valid):
    return nnx.merge(graphdef, state)(pyramid, image_sizes, queries, boxes, valid)


def run_head(graphdef, state, pyramid, queries, boxes, valid, image_sizes=IMAGE_SIZES):
    """The head's stages as numpy arrays (one compile per graphdef and shapes)."""
    out = _run_head(graphdef, state, pyramid, jnp.asarray(image_sizes, jnp.int32), queries, boxes, valid)
    return jax.tree.map(np.asarray, out)


def test_output_shapes_and_capacities():
    graphdef, state = build(max_selected=40)
    queries = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, C)), jnp.float32)
    stages = run_head(graphdef, state, make_pyramid(), queries, jnp.asarray(BOXES), jnp.asarray(ROI_VALID))
    assert len(stages) == 4
    counts = [3 * 196, 160, 160, 160]  # C0 = 196 R; K = min(40, C0); A = 4K
    for s, cells in enumerate(stages):
        assert cells["seg"].shape == cells["ref"].shape == cells["valid"].shape == cells["roi"].shape == (2, counts[s])
        assert cells["xy"].shape == (2, counts[s], 2)
        assert cells["seg"].dtype == jnp.float32
        size = 14 * 2 ** s
        xy = np.asarray(cells["xy"])
        assert xy.min() >= 0 and xy.max() < size
        valid, roi = np.asarray(cells["valid"]), np.asarray(cells["roi"])
        np.testing.assert_array_equal(valid, ROI_VALID[np.arange(2)[:, None], roi])
        assert np.isfinite(np.asarray(cells["seg"])).all()
        if s > 0:
            # every valid cell is distinct: one active per grid cell
            keys = roi * size * size + xy[..., 1] * size + xy[..., 0]
            for b in range(2):
                assert len(set(keys[b][valid[b]].tolist())) == int(valid[b].sum())
            # 40 picks, the 2x2 children of each are consecutive
            np.testing.assert_array_equal(xy[:, 0::4] // 2, xy[:, 3::4] // 2)
    # Image 0 has 392 valid cells > K: every pick is valid. Stage 1 cells are children of the
    # highest-refinement stage-0 cells.
    assert np.asarray(stages[1]["valid"])[0].all()
    ref0 = np.asarray(stages[0]["ref"])[0].reshape(3, 14, 14)
    chosen = np.asarray(stages[1]["xy"])[0, ::4] // 2
    chosen_roi = np.asarray(stages[1]["roi"])[0, ::4]
    chosen_scores = ref0[chosen_roi, chosen[:, 1], chosen[:, 0]]
    valid_scores = np.sort(ref0[:2].reshape(-1))[::-1]
    np.testing.assert_allclose(np.sort(chosen_scores)[::-1], valid_scores[:40], rtol=1e-6)


@pytest.mark.slow  # one or two head compiles each (~15 s on a quiet 2-core machine)
def test_sps_with_every_cell_active_equals_the_dense_head():
    """Through the whole head: SFM by IdConvs on SPS maps where every cell is active
    (K >= every cell at every stage) equals DenseSFM (dense 3x3 convolutions of the maps)."""
    graphdef, state = build(max_selected=10 ** 6)
    dense_graphdef = nnx.split(abstract_init(lambda: EffSegHead(levels=LEVELS, channels=C, processing="dense_sfm",
                                                                rngs=nnx.Rngs(0))))[0]
    rng = np.random.default_rng(2)
    pyramid = make_pyramid(3)
    queries = jnp.asarray(rng.normal(size=(2, 2, C)), jnp.float32)
    boxes = jnp.asarray(BOXES[:, :2])
    valid = jnp.asarray(ROI_VALID[:, :2])
    sparse = run_head(graphdef, state, pyramid, queries, boxes, valid)
    dense = run_head(dense_graphdef, state, pyramid, queries, boxes, valid)
    for s, (a, b) in enumerate(zip(sparse, dense)):
        assert a["seg"].shape == (2, 2 * 196 * 4 ** s)  # every cell active
        np.testing.assert_array_equal(a["xy"], b["xy"])
        np.testing.assert_allclose(a["seg"], b["seg"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a["ref"], b["ref"], rtol=1e-4, atol=1e-5)


def test_per_roi_budget_equals_the_fixed_budget_of_the_rois_present():
    """``selected_per_roi`` = ρ refines ρ · (valid RoIs) cells per image and stage: with padding
    RoIs in the batch, every valid RoI's masks equal those of a fixed K = ρ · n_valid run on
    the valid RoIs alone (the picks over the budget behave as passive cells), and K
    differs per image."""
    from msvision.models.heads.effseg.postprocess import assemble_mask_logits

    rho = 12
    graphdef, state = build(max_selected=10 ** 6, selected_per_roi=rho)
    rng = np.random.default_rng(4)
    pyramid = make_pyramid(5)
    queries = jnp.asarray(rng.normal(size=(2, 3, C)), jnp.float32)
    stages = run_head(graphdef, state, pyramid, queries, jnp.asarray(BOXES), jnp.asarray(ROI_VALID))
    assert stages[1]["seg"].shape == (2, 4 * rho * 3)  # capacity ρ · R
    budget = rho * ROI_VALID.sum(1)  # [24, 36]
    for s in (1, 2, 3):  # the budget per image, counted in valid children
        np.testing.assert_array_equal(stages[s]["valid"].sum(1), 4 * budget)
    budgeted = assemble_mask_logits(stages, 3)
    for b in range(2):
        n = int(ROI_VALID[b].sum())
        fixed_graphdef, _ = build(max_selected=rho * n)  # same parameters (same shapes and draws)
        alone = run_head(fixed_graphdef, state, {l: p[b:b + 1] for l, p in pyramid.items()}, queries[b:b + 1, :n],
                         jnp.asarray(BOXES[b:b + 1, :n]), jnp.ones((1, n), bool), image_sizes=IMAGE_SIZES[b:b + 1])
        np.testing.assert_allclose(np.asarray(budgeted)[b, :n], np.asarray(assemble_mask_logits(alone, n))[0],
                                   rtol=1e-4, atol=1e-5)


def test_per_stage_budget_refines_its_own_count_at_every_stage():
    """``selected_per_roi`` per stage, (ρ_1, ρ_2, ρ_3): stage s refines ρ_s · (valid RoIs) cells
    per image; the stages before the first differing budget equal the single-ρ head's, and
    a per-stage budget of equal values is the single-ρ head."""
    rhos = (12, 20, 30)
    graphdef, state = build(max_selected=10 ** 6, selected_per_roi=rhos)
    single, _ = build(max_selected=10 ** 6, selected_per_roi=12)
    same, _ = build(max_selected=10 ** 6, selected_per_roi=(12, 12, 12))
    rng = np.random.default_rng(5)
    pyramid = make_pyramid(6)
    queries = jnp.asarray(rng.normal(size=(2, 3, C)), jnp.float32)
    args = (pyramid, queries, jnp.asarray(BOXES), jnp.asarray(ROI_VALID))
    staged = run_head(graphdef, state, *args)
    flat = run_head(single, state, *args)
    for s, rho in enumerate(rhos, start=1):
        assert staged[s]["seg"].shape == (2, 4 * rho * 3)
        np.testing.assert_array_equal(staged[s]["valid"].sum(1), 4 * rho * ROI_VALID.sum(1))
    for key in ("seg", "ref", "xy", "valid"):
        np.testing.assert_array_equal(staged[1][key], flat[1][key])
    for a, b in zip(run_head(same, state, *args), flat):
        np.testing.assert_array_equal(a["seg"], b["seg"])
    with pytest.raises(ValueError, match="per stage"):
        EffSegHead(levels=LEVELS, channels=C, selected_per_roi=(12, 20), rngs=nnx.Rngs(0))


# --- training RoIs --------------------------------------------------------------------------


def numpy_train_rois(matched, positive, quality, capacity):
    """Keep order written from the definition: rank among the positives of the same object
    (by quality, then query index), then object slot, then query index."""
    out = []
    for b in range(matched.shape[0]):
        keys = []
        for q in np.flatnonzero(positive[b]):
            same = [p for p in np.flatnonzero(positive[b]) if matched[b, p] == matched[b, q]]
            rank = sum(1 for p in same if quality[b, p] > quality[b, q] or (quality[b, p] == quality[b, q] and p < q))
            keys.append((rank, matched[b, q], q))
        out.append([q for _, _, q in sorted(keys)][:capacity])
    return out


def test_train_roi_overflow_is_counted_and_keeps_every_object_first():
    rng = np.random.default_rng(4)
    q, m = 40, 5
    matched = rng.integers(0, m, (2, q)).astype(np.int32)
    positive = rng.random((2, q)) < 0.6
    positive[1] = False
    positive[1, [3, 7]] = True
    quality = rng.integers(0, 4, (2, q)).astype(np.float32) / 4  # ties on purpose
    queries = QueryOutputs(queries=jnp.zeros((2, q, 4)), boxes=jnp.zeros((2, q, 4)), matched=jnp.asarray(matched),
                           positive=jnp.asarray(positive), match_quality=jnp.asarray(quality))
    capacity = 8
    rois = jax.jit(select_train_rois, static_argnums=1)(queries, capacity)
    expected = numpy_train_rois(matched, positive, quality, capacity)
    for b in range(2):
        kept = np.asarray(rois.query_index[b])[np.asarray(rois.valid[b])].tolist()
        assert kept == expected[b]
        np.testing.assert_array_equal(np.asarray(rois.gt_index[b])[: len(kept)], matched[b, kept])
        assert not np.asarray(rois.valid[b])[len(kept):].any()
    n_pos = positive.sum(1)
    np.testing.assert_array_equal(rois.num_positive, n_pos)
    np.testing.assert_array_equal(rois.num_dropped, np.maximum(n_pos - capacity, 0))
    assert int(rois.num_dropped[0]) > 0 and int(rois.num_dropped[1]) == 0
    # Image 0 has positives of all 5 objects: the first 5 kept are one per object.
    objects = {matched[0, i] for i in np.flatnonzero(positive[0])}
    assert len(objects) == m and sorted(matched[0, expected[0][:m]].tolist()) == sorted(objects)
    assert positive_priority(jnp.asarray(matched), jnp.asarray(positive), jnp.asarray(quality)).dtype == jnp.int32


# --- losses -----------------------------------------------------------------------------------


def numpy_cell_average(mask, box, size, samples):
    """Mean of ``samples``² torchvision-style bilinear samples per cell of a size² grid (aligned)."""
    x0, y0, x1, y1 = np.asarray(box, np.float64) - 0.5
    steps = (np.arange(size)[:, None] + (np.arange(samples)[None, :] + 0.5) / samples).reshape(-1)  # [size·samples]
    y = y0 + steps * (y1 - y0) / size
    x = x0 + steps * (x1 - x0) / size
    values = bilinear_tv(mask, y[:, None], x[None, :])  # [size·samples, size·samples]
    return values.reshape(size, samples, size, samples).mean(axis=(1, 3))


def bilinear_tv(m, y, x):
    """torchvision's ``bilinear_interpolate`` (roi_align_kernel.cpp) of ``m`` at broadcast (y, x)."""
    h, w = m.shape
    y, x = np.broadcast_arrays(np.asarray(y, np.float64), np.asarray(x, np.float64))
    outside = (y < -1) | (y > h) | (x < -1) | (x > w)
    y, x = np.maximum(y, 0.0), np.maximum(x, 0.0)
    yl, xl = np.floor(y).astype(int), np.floor(x).astype(int)
    y = np.where(yl >= h - 1, h - 1.0, y)
    x = np.where(xl >= w - 1, w - 1.0, x)
    yl, xl = np.minimum(yl, h - 1), np.minimum(xl, w - 1)
    yh, xh = np.minimum(yl + 1, h - 1), np.minimum(xl + 1, w - 1)
    ly, lx = y - yl, x - xl
    value = ((1 - ly) * (1 - lx) * m[yl, xl] + (1 - ly) * lx * m[yl, xh] + ly * (1 - lx) * m[yh, xl]
             + ly * lx * m[yh, xh])
    return np.where(outside, 0.0, value)


def numpy_centre(mask, box, size):
    """The mask pixel holding each cell centre (zero outside the mask)."""
    h, w = mask.shape
    x0, y0, x1, y1 = np.asarray(box, np.float64)
    centres = np.arange(size) + 0.5
    rows = np.floor(y0 + centres * (y1 - y0) / size).astype(int)[:, None]
    cols = np.floor(x0 + centres * (x1 - x0) / size).astype(int)[None, :]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return inside & mask[np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)].astype(bool)


def bce(logit, target):
    """Sigmoid cross-entropy, float64, elementwise."""
    logit = np.asarray(logit, np.float64)
    return np.maximum(logit, 0.0) - logit * target + np.log1p(np.exp(-np.abs(logit)))


def loss_case():
    """Two images with 3 masks and 6 queries each, 4 of them positive: ``(batch, queries, boxes, masks, pyramid)``."""
    rng = np.random.default_rng(5)
    b, q, m = 2, 6, 3
    masks = np.zeros((b, m, CANVAS, CANVAS), bool)
    yy, xx = np.mgrid[:CANVAS, :CANVAS]
    masks[0, 0] = (xx - 20) ** 2 + (yy - 25) ** 2 < 15 ** 2
    masks[0, 1] = (xx > 30) & (yy > 5) & (xx - 30 < 30 - (yy - 5))  # a triangle
    masks[1, 0] = (np.abs(xx - 30) < 4) | (np.abs(yy - 20) < 3)  # a thin cross
    masks[1, 0, :, 50:] = False
    masks[1, 0, 40:] = False
    masks[1, 2] = (xx > 8) & (xx < 30) & (yy > 35) & (yy < 48)
    boxes = np.array([[[5, 9, 36, 41], [28, 3, 62, 33], [0, 0, 9, 9], [2, 2, 40, 44], [30, 6, 60, 30], [1, 1, 2, 2]],
                      [[22, 14, 47, 38], [7, 33, 31, 50], [0, 0, 20, 20], [25, 10, 49, 39], [1, 1, 3, 3],
                       [9, 30, 33, 52]]], np.float32)
    boxes += rng.uniform(0.1, 0.9, boxes.shape).astype(np.float32)  # no exact ties at v = 0.5 (float32 vs 64)
    matched = np.array([[0, 1, 0, 0, 1, 2], [0, 2, 1, 0, 0, 2]], np.int32)
    positive = np.array([[1, 1, 0, 1, 1, 0], [1, 1, 0, 1, 0, 1]], bool)
    quality = rng.random((b, q)).astype(np.float32)
    batch = Batch(images=np.zeros((b, CANVAS, CANVAS, 3), np.uint8), image_sizes=IMAGE_SIZES,
                  orig_sizes=IMAGE_SIZES, image_ids=np.arange(b, dtype=np.int32),
                  boxes=np.zeros((b, m, 4), np.float32), labels=np.zeros((b, m), np.int32),
                  valid=np.ones((b, m), bool), is_crowd=np.zeros((b, m), bool), masks=masks)
    queries = QueryOutputs(queries=jnp.asarray(rng.normal(size=(b, q, C)), jnp.float32), boxes=jnp.asarray(boxes),
                           matched=jnp.asarray(matched), positive=jnp.asarray(positive),
                           match_quality=jnp.asarray(quality))
    pyramid = make_pyramid(6)
    return batch, queries, boxes, masks, pyramid


@functools.partial(jax.jit, static_argnums=0)
def _losses(graphdef, state, pyramid, batch, queries):
    return nnx.merge(graphdef, state).losses(pyramid, batch, queries)


@pytest.mark.slow  # one or two head compiles each (~15 s on a quiet 2-core machine)
@pytest.mark.parametrize("seg_target", ["centre", "average"])
def test_losses_match_numpy_from_the_masks(seg_target):
    """loss = Σ_s w_s · mean over the supervised cells of BCE × number of RoIs, per image, averaged
    over images; weights 0.25/0.375/0.375/0.5 (segmentation) and 0.25 x 4 (refinement), targets
    from the ground-truth masks at the predicted boxes (thesis §5.3.3; released
    ``EffSegHead.compute_losses``)."""
    graphdef, state = build(max_selected=40, max_train_rois=4, loss=EffSegCriterion(seg_target=seg_target))
    batch, queries, boxes, masks, pyramid = loss_case()
    b = boxes.shape[0]

    total, metrics = _losses(graphdef, state, pyramid, batch, queries)

    # The same RoIs through the network (capacity 4 of 4 / 4 positives: nothing dropped).
    rois = select_train_rois(queries, 4)
    assert int(jnp.sum(rois.num_dropped)) == 0
    idx = np.asarray(rois.query_index)
    roi_boxes = boxes[np.arange(b)[:, None], idx]
    roi_queries = jnp.asarray(np.asarray(queries.queries)[np.arange(b)[:, None], idx])
    # The forward of the same parameters (the loss settings do not change the network).
    head_graphdef, head_state = build(max_selected=40)
    stages = run_head(head_graphdef, head_state, pyramid, roi_queries, jnp.asarray(roi_boxes), rois.valid)
    gt = np.asarray(rois.gt_index)
    valid = np.asarray(rois.valid)
    seg_w, ref_w = (0.25, 0.375, 0.375, 0.5), (0.25, 0.25, 0.25, 0.25)
    expected = {"seg": 0.0, "ref": 0.0}
    for image in range(b):
        n_rois = int(valid[image].sum())
        h, w = IMAGE_SIZES[image]
        for s, cells in enumerate(stages):
            size = 14 * 2 ** s
            targets = {}
            for r in range(4):
                mask = masks[image, gt[image, r], :h, :w].astype(np.float64)
                v = numpy_cell_average(mask, roi_boxes[image, r], size, 2 ** (4 - s))
                seg = numpy_centre(mask, roi_boxes[image, r], size) if seg_target == "centre" else v > 0.5
                targets[r] = (seg, (v > 1e-4) & (v < 1 - 1e-4))
            ok = cells["valid"][image]
            roi, xy = cells["roi"][image][ok], cells["xy"][image][ok]
            count = int(ok.sum())
            sums = {}
            for name, t in (("seg", 0), ("ref", 1)):
                target = np.stack([targets[r][t] for r in range(4)])[roi, xy[:, 1], xy[:, 0]]
                sums[name] = float(bce(cells[name][image][ok], target.astype(np.float64)).sum())
            for name, weights in (("seg", seg_w), ("ref", ref_w)):
                expected[name] += weights[s] * sums[name] / max(count, 1) * n_rois / b
    np.testing.assert_allclose(metrics["loss_mask_seg"], expected["seg"], rtol=2e-4)
    np.testing.assert_allclose(metrics["loss_mask_ref"], expected["ref"], rtol=2e-4)
    np.testing.assert_allclose(total, expected["seg"] + expected["ref"], rtol=2e-4)
    assert float(metrics["seg/rois_per_image"]) == 4.0 and float(metrics["seg/dropped_rois"]) == 0.0


@pytest.mark.slow  # one or two head compiles each (~15 s on a quiet 2-core machine)
def test_predict_masks_per_query_and_scores_by_class_times_mask_probability():
    """One mask per distinct detected query (a query detected with two classes shares it);
    score = class score × mean pasted probability over p > 0.5 (eq. 5.3), re-sorted."""
    from msvision.models.heads.effseg.postprocess import assemble_mask_logits
    from msvision.models.heads.roi_mask.postprocess import paste_masks
    from msvision.structures import Detections

    graphdef, state = build(max_selected=40)
    rng = np.random.default_rng(7)
    q = 5
    queries = QueryOutputs(queries=jnp.asarray(rng.normal(size=(2, q, C)), jnp.float32),
                           boxes=jnp.asarray(np.concatenate([BOXES, BOXES[:, :2] + 3], 1)),
                           detection_queries=jnp.asarray([[4, 1, 4, 0], [2, 2, 3, 0]], jnp.int32))
    dets = Detections(boxes=jnp.zeros((2, 4, 4)), scores=jnp.asarray([[0.9, 0.8, 0.5, 0.0], [0.7, 0.6, 0.4, 0.0]]),
                      labels=jnp.asarray([[1, 0, 2, 0], [0, 1, 1, 0]], jnp.int32),
                      valid=jnp.asarray([[True, True, True, False], [True, True, True, False]]))
    batch = Batch(images=np.zeros((2, CANVAS, CANVAS, 3), np.uint8), image_sizes=IMAGE_SIZES, orig_sizes=IMAGE_SIZES,
                  image_ids=np.arange(2, dtype=np.int32), boxes=np.zeros((2, 1, 4), np.float32),
                  labels=np.zeros((2, 1), np.int32), valid=np.zeros((2, 1), bool), is_crowd=np.zeros((2, 1), bool))
    pyramid = make_pyramid(8)
    out = jax.jit(lambda st, p, bt, d, qo: nnx.merge(graphdef, st).predict(p, bt, d, qo))(
        state, pyramid, batch, dets, queries)
    assert out.masks.shape == (2, 4, 112, 112) and out.mask_boxes.shape == (2, 4, 4)

    # Oracle: the network on the distinct detected queries of each image (the K refined cells
    # are chosen among the RoIs of the image, so the RoI set matters), masks pasted by the
    # numpy-checked paste_masks.
    det_q = np.asarray(queries.detection_queries)
    slots = [sorted(set(det_q[i, :3].tolist())) for i in range(2)]  # [[1, 4], [2, 3]]
    index = np.array([sl + [0] * (4 - len(sl)) for sl in slots])
    take = lambda x: jnp.asarray(np.asarray(x)[np.arange(2)[:, None], index])  # noqa: E731
    roi_out = run_head(graphdef, state, pyramid, take(queries.queries), take(queries.boxes),
                       jnp.asarray(np.arange(4)[None] < np.array([[len(sl)] for sl in slots])))
    slot_probs = np.asarray(jax.nn.sigmoid(assemble_mask_logits(roi_out, 4)))
    probs = np.zeros((2, q, 112, 112), np.float32)
    for i in range(2):
        for j, query in enumerate(slots[i]):
            probs[i, query] = slot_probs[i, j]
    for image in range(2):
        expected = []
        h, w = IMAGE_SIZES[image]
        for k in range(3):
            box = np.asarray(queries.boxes)[image, det_q[image, k]]
            pasted = np.asarray(paste_masks(jnp.asarray(probs[image, det_q[image, k]][None]),
                                            jnp.asarray(box[None]), CANVAS, CANVAS))[0, :h, :w]
            fg = pasted > 0.5
            expected.append((float(dets.scores[image, k]) * pasted[fg].sum() / (fg.sum() + 1e-6), k))
        expected.sort(key=lambda t: -t[0])
        np.testing.assert_allclose(out.scores[image, :3], [s for s, _ in expected], rtol=2e-4, atol=1e-6)
        for slot, (_, k) in enumerate(expected):
            np.testing.assert_allclose(out.masks[image, slot], probs[image, det_q[image, k]], rtol=1e-4, atol=1e-5)
            np.testing.assert_array_equal(out.labels[image, slot], dets.labels[image, k])
            np.testing.assert_allclose(out.mask_boxes[image, slot], np.asarray(queries.boxes)[image, det_q[image, k]])
        assert not bool(out.valid[image, 3]) and float(out.scores[image, 3]) == 0.0
        assert not np.asarray(out.masks[image, 3]).any()


@pytest.mark.slow  # one or two head compiles each (~15 s on a quiet 2-core machine)
def test_masks_do_not_depend_on_the_batch_padding():
    """An image's RoIs read the same features alone (a canvas of its own valid map) and padded
    into a larger canvas holding garbage outside its valid cells (RoIAlign border rules at
    the image's map, neck sampled on maps zeroed outside the image)."""
    graphdef, state = build(max_selected=40)
    rng = np.random.default_rng(9)
    h, w = 50, 58
    alone = {l: rng.normal(size=(1, -(-h // 2 ** l), -(-w // 2 ** l), C)).astype(np.float32) for l in LEVELS}
    padded = {}
    for l, x in alone.items():
        canvas = rng.normal(size=(1, CANVAS >> l, CANVAS >> l, C)).astype(np.float32) * 5.0  # garbage
        canvas[:, :x.shape[1], :x.shape[2]] = x
        padded[l] = canvas
    boxes = jnp.asarray([[[30, 20, 57.5, 49.5], [-5, 10, 20, 60], [3, 4, 40, 30]]], jnp.float32)
    queries = jnp.asarray(rng.normal(size=(1, 3, C)), jnp.float32)
    valid = jnp.ones((1, 3), bool)

    a = run_head(graphdef, state, {l: jnp.asarray(v) for l, v in alone.items()}, queries, boxes, valid, [[h, w]])
    b = run_head(graphdef, state, {l: jnp.asarray(v) for l, v in padded.items()}, queries, boxes, valid, [[h, w]])
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa["xy"], sb["xy"])
        np.testing.assert_allclose(sa["seg"], sb["seg"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sa["ref"], sb["ref"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # one or two head compiles each (~15 s on a quiet 2-core machine)
def test_training_roi_overflow_is_logged_by_the_loss():
    """4 positives per image, capacity 3: one dropped per image, counted in the metrics
    (``seg/dropped_rois`` over the batch), the loss normalised by the 3 kept."""
    graphdef, state = build(max_selected=40, max_train_rois=3)
    batch, queries, _, _, pyramid = loss_case()
    _, metrics = _losses(graphdef, state, pyramid, batch, queries)
    assert float(metrics["seg/positive_queries"]) == 8.0
    assert float(metrics["seg/dropped_rois"]) == 2.0
    assert float(metrics["seg/rois_per_image"]) == 3.0
