"""FQDet / FQDetV2 head: query selection, static top-k matching, inference labelling
and losses against numpy oracles; ablation switches; one-batch overfitting."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pathlib

import ml_collections

from msvision.config import load_config_file
from msvision.config_schema import ConfigError, section_kwargs
from msvision.models.backbones.resnet import ResNet
from msvision.models.build import module_config, resolve_model_config
from msvision.models.detector import Detector
from msvision.models.heads.fqdet import FQDetHead
from msvision.models.layers import count_variables
from msvision.models.necks.fpn import FPN
from msvision.ops.anchors import anchor_cells
from msvision.structures import Batch
from msvision.models.abstract import abstract_init

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"

LEVELS = (3, 4, 5, 6, 7)
D = 16
K = 3


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    sizes = np.array([[64, 64], [48, 56]], np.int32)
    return Batch(
        images=rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
        image_sizes=sizes,
        orig_sizes=sizes * 2,
        image_ids=np.arange(2, dtype=np.int32),
        boxes=np.array(
            [[[4, 6, 30, 40], [30, 20, 60, 44], [0, 0, 0, 0]], [[10, 8, 26, 20], [20, 24, 50, 46], [0, 0, 8, 8]]],
            np.float32,
        ),
        labels=np.array([[0, 2, 0], [1, 2, 0]], np.int32),
        valid=np.array([[1, 1, 0], [1, 1, 1]], bool),
        is_crowd=np.array([[0, 0, 0], [0, 0, 1]], bool),
    )


def make_pyramid(seed=0, hw=64):
    rng = np.random.default_rng(seed)
    return {l: jnp.asarray(rng.normal(size=(2, -(-hw // 2**l), -(-hw // 2**l), D)), jnp.float32) for l in LEVELS}


def head_config(variant: str) -> ml_collections.ConfigDict:
    """The ``model.head`` section of the thesis configs: base FQDet ('fqdet') or FQDetV2 ('fqdetv2')."""
    if variant == "fqdet":
        return module_config("head", "fqdet")
    return load_config_file(str(CONFIGS / "fqdet" / "r50_fpn_fqdetv2.py")).model.head


def tiny_cfg(variant="fqdet", **overrides):
    """``overrides``: ``section__field=value`` (e.g. ``selector__num_queries=20``)."""
    cfg = head_config(variant)
    # One decoder layer keeps XLA compiles short; the overfitting tests use two.
    small = dict(selector__num_queries=20, selector__hidden_channels=8, decoder__num_layers=1, decoder__ffn_dim=32,
                 decoder__num_heads=4, decoder__self_attn_heads=4, decoder__msda_impl="xla")
    for key, value in {**small, **overrides}.items():
        section, field = key.split("__")
        cfg[section][field] = value
    return cfg


def tiny_head(variant="fqdet", **overrides) -> FQDetHead:
    cfg = tiny_cfg(variant, **overrides)
    return FQDetHead(K, LEVELS, D, rngs=nnx.Rngs(0), **section_kwargs(cfg, FQDetHead, skip=("name",)))


def np_iou(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def in_image(head, pyramid, hw):
    """``[N]`` bool: the anchor's cell lies in the image's valid map (ceil(h/2^l) × ceil(w/2^l))."""
    cells, strides = anchor_cells({l: pyramid[l].shape[1:3] for l in LEVELS}, head.anchor_spec.num_types)
    return (cells[:, 0] < -(-hw[0] // strides)) & (cells[:, 1] < -(-hw[1] // strides))


# --- stage 1 --------------------------------------------------------------------------


def test_query_selection_vs_argsort():
    head = tiny_head(selector__num_queries=200)
    batch, pyramid = make_batch(), make_pyramid()
    res = jax.jit(lambda p, b: {k: v for k, v in head(p, b).items() if k in ("sel_logits", "query_ids")})(
        pyramid, batch)
    anchors = head.anchor_tables(pyramid)["anchors"]
    logits, qids = np.asarray(res["sel_logits"]), np.asarray(res["query_ids"])
    assert qids.shape == (2, 200) and logits.shape == (2, anchors.shape[0])
    padding_would_win = False
    for b in range(2):
        ok = in_image(head, pyramid, batch.image_sizes[b])
        expected = np.argsort(-np.where(ok, logits[b], -np.inf), kind="stable")[:200]
        np.testing.assert_array_equal(qids[b], expected)
        assert ok[qids[b]].all() and len(set(qids[b])) == 200
        padding_would_win |= (~ok[np.argsort(-logits[b], kind="stable")[:200]]).any()
    assert padding_would_win  # the mask matters for this batch


def np_topk_matching(anchors, gt, real, query_anchor_ids, k):
    """The author's rule (``TopMatcher``, DetSeg ``models/modules/matcher.py``): per gt its
    top-k anchors by IoU over all anchors (padding included, as the released code); a selected
    anchor in those lists is positive; conflicts go to the best rank, then the higher IoU,
    then the lower gt index."""
    iou = np_iou(anchors, gt)
    lists = {m: list(np.argsort(-iou[:, m], kind="stable")[:k]) for m in range(len(gt)) if real[m]}
    matched = np.zeros(len(query_anchor_ids), np.int64)
    positive = np.zeros(len(query_anchor_ids), bool)
    for q, a in enumerate(query_anchor_ids):
        best = None
        for m, lst in lists.items():
            if a in lst:
                key = (lst.index(a), -iou[a, m], m)
                best = key if best is None or key < best else best
        if best is not None:
            matched[q], positive[q] = best[2], True
    return matched, positive


def test_static_topk_matching_through_head_vs_numpy_loop():
    head = tiny_head()
    batch, pyramid = make_batch(), make_pyramid()
    anchors = head.anchor_tables(pyramid)["anchors"]
    rng = np.random.default_rng(3)
    anchor_valid = jnp.asarray(np.stack([in_image(head, pyramid, hw) for hw in batch.image_sizes]))
    sel_pos, _, cands, cand_valid = jax.jit(lambda v: head.matcher.selection_targets(anchors, v, batch))(
        anchor_valid)

    # Queries: half from the gts' top-20 lists (so many match), half random in-image anchors.
    qids = []
    for b in range(2):
        iou = np_iou(anchors, batch.boxes[b])
        near = np.unique(np.argsort(-iou, axis=0, kind="stable")[:20].reshape(-1))
        ok = np.flatnonzero(in_image(head, pyramid, batch.image_sizes[b]))
        pick = np.concatenate([rng.choice(near, 30, replace=False), rng.choice(ok, 30, replace=False)])
        qids.append(np.unique(pick)[:50])
    qids = np.stack(qids).astype(np.int32)
    out = dict(priors=jnp.asarray(anchors)[qids])
    matched, positive, ignore = jax.jit(lambda o, q: head.matcher.query_targets(o, q, cands, cand_valid, batch, K))(
        out, jnp.asarray(qids))

    for b in range(2):
        real = batch.valid[b] & ~batch.is_crowd[b]
        m_ref, p_ref = np_topk_matching(anchors, batch.boxes[b], real, qids[b], 15)
        np.testing.assert_array_equal(np.asarray(positive[b]), p_ref)
        np.testing.assert_array_equal(np.asarray(matched[b])[p_ref], m_ref[p_ref])
        assert 5 < p_ref.sum() < len(p_ref)
        # stage 1: the same rule with k = 5 over all anchors
        _, s_ref = np_topk_matching(anchors, batch.boxes[b], real, np.arange(len(anchors)), 5)
        np.testing.assert_array_equal(np.asarray(sel_pos[b]), s_ref)
        assert s_ref.sum() == 5 * real.sum()
    assert not np.asarray(ignore).any()  # no ignore rule is on by default


# --- inference ------------------------------------------------------------------------


def np_greedy_nms(boxes, scores, labels, thr, max_out):
    keep = []
    for i in range(len(boxes)):
        if len(keep) == max_out:
            break
        if all(labels[j] != labels[i] or np_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= thr for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("candidate_labels", ["query_class_pairs", "per_query_label"])
def test_inference_labels_vs_numpy_loop(candidate_labels):
    head = tiny_head("fqdetv2", selector__num_queries=20, inference__labels=candidate_labels,
                     inference__nms_candidates=30,
                     inference__max_detections=10, inference__nms_iou=0.5)
    batch, pyramid = make_batch(), make_pyramid(1)
    # Sharper class scores so several classes compete per box.
    head.heads[0].cls.bias[...] = jnp.asarray([0.5, 0.0, -0.5, -2.0])
    out, dets = jax.jit(lambda p, b: (head(p, b)["outputs"][-1], head.predict(p, b)))(pyramid, batch)
    for b in range(2):
        cls = np.asarray(out["cls"][b], np.float64)
        scores = 1 / (1 + np.exp(-cls[:, :K])) / (1 + np.exp(-np.asarray(out["box_score"][b], np.float64)))[:, None]
        h, w = batch.image_sizes[b]
        boxes = np.asarray(out["boxes"][b], np.float64).copy()
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if candidate_labels == "query_class_pairs":  # every (query, class) pair
            pairs = [(q, c, scores[q, c]) for q in range(20) for c in range(K) if ok[q]]
        else:  # one label per box
            pairs = [(q, int(np.argmax(scores[q])), scores[q].max()) for q in range(20) if ok[q]]
        pairs = sorted(pairs, key=lambda t: -t[2])[:30]
        cb = np.array([boxes[q] for q, _, _ in pairs])
        keep = np_greedy_nms(cb, None, [c for _, c, _ in pairs], 0.5, 10)
        n = int(dets.num_valid[b])
        assert n == len(keep)
        np.testing.assert_allclose(np.asarray(dets.scores[b, :n]), [pairs[i][2] for i in keep], rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(dets.labels[b, :n]), [pairs[i][1] for i in keep])
        np.testing.assert_allclose(np.asarray(dets.boxes[b, :n]), cb[keep], rtol=1e-5, atol=1e-4)
        assert not np.asarray(dets.valid[b, n:]).any()
    if candidate_labels == "query_class_pairs":
        assert int(dets.num_valid.min()) == 10  # more triples than slots: truncated at max_detections


@pytest.mark.parametrize("variant", ["learned", "soft_learned"])
def test_learned_duplicate_removal_vs_pairwise_loop(variant):
    """Thesis 4.5.2 as a loop over candidate pairs: 'learned' removes the lower-scoring
    detection of every same-label pair with duplicate score d > 0.5; 'soft_learned'
    multiplies a detection's score by (1 - d)^2 for every higher-scoring same-label
    detection. Equal scores rank by candidate order; invalid candidates never act."""
    head = tiny_head("fqdetv2", inference__duplicate_removal=variant)
    rng = np.random.default_rng(7)
    # duplicate logits spread around 0 (at init they are all close to it)
    head.duplicate_net.logits.kernel[...] = jnp.asarray(rng.normal(size=(D, 1)) * 3, jnp.float32)
    b, q, c = 2, 20, 12
    queries = jnp.asarray(rng.normal(size=(b, q, D)), jnp.float32)
    query_ids = jnp.asarray(np.stack([rng.choice(q, c, replace=False) for _ in range(b)]), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 2, (b, c)), jnp.int32)
    scores = np.round(rng.uniform(0, 1, (b, c)), 1).astype(np.float32)  # rounding makes ties
    valid = rng.uniform(size=(b, c)) > 0.2
    out_scores, out_valid = head.postprocess.learned_duplicate_removal(
        head.duplicate_net(queries), query_ids, labels, jnp.asarray(scores), jnp.asarray(valid))
    d_all = np.asarray(jax.nn.sigmoid(head.duplicate_net(queries)), np.float64)
    for i in range(b):
        d = d_all[i][np.asarray(query_ids[i])][:, np.asarray(query_ids[i])]
        keep, factor = valid[i].copy(), np.ones(c)
        for lo in range(c):
            for hi in range(c):
                ranks_above = scores[i, hi] > scores[i, lo] or (scores[i, hi] == scores[i, lo] and hi < lo)
                if hi == lo or not ranks_above or not valid[i, hi] or labels[i, hi] != labels[i, lo]:
                    continue
                if d[lo, hi] > 0.5:
                    keep[lo] = False
                factor[lo] *= (1 - d[lo, hi]) ** 2
        if variant == "learned":
            np.testing.assert_array_equal(np.asarray(out_valid[i]), keep)
            np.testing.assert_array_equal(np.asarray(out_scores[i]), scores[i])
            assert 0 < keep.sum() < valid[i].sum()  # the case is not trivial
        else:
            np.testing.assert_array_equal(np.asarray(out_valid[i]), valid[i])
            expected = np.where(valid[i], scores[i] * factor, scores[i])
            np.testing.assert_allclose(np.asarray(out_scores[i]), expected, rtol=1e-5, atol=1e-7)
            assert np.any(factor[valid[i]] < 0.99)


# --- losses ---------------------------------------------------------------------------


def _np_bce(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def _np_eiou(p, t, smooth=0.1, eps=1e-6):
    """mmdet ``eiou_loss`` transcribed."""
    ex0, ey0 = min(p[0], t[0]), min(p[1], t[1])
    ix0, iy0 = max(p[0], t[0]) - ex0, max(p[1], t[1]) - ey0
    ix1, iy1 = min(p[2], t[2]) - ex0, min(p[3], t[3]) - ey0
    inter = ix1 * iy1 + min(ix0, ix1) * min(iy0, iy1) - ix0 * max(iy0, iy1) - max(ix0, ix1) * iy0
    union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter + eps
    u = 1 - inter / union
    return 0.5 * u * u / smooth if u < smooth else u - 0.5 * smooth


@pytest.mark.parametrize("variant,reduction", [("fqdet", "sum"), ("fqdetv2", "sum"), ("fqdetv2", "mean_per_gt")])
def test_losses_vs_formulas(variant, reduction):
    head = tiny_head(variant, loss__reduction=reduction)
    batch = make_batch()
    rng = np.random.default_rng(5)
    b, q = 2, 6
    xy = rng.uniform(0, 40, (b, q, 2))
    priors = np.concatenate([xy, xy + rng.uniform(8, 24, (b, q, 2))], -1).astype(np.float32)
    deltas = rng.normal(0, 0.3, (b, q, 4)).astype(np.float32)
    from msvision.ops.boxes import decode_box_deltas

    boxes = np.asarray(decode_box_deltas(jnp.asarray(deltas), jnp.asarray(priors)))
    out = dict(cls=jnp.asarray(rng.normal(size=(b, q, K + 1)), jnp.float32), deltas=jnp.asarray(deltas),
               boxes=jnp.asarray(boxes), priors=jnp.asarray(priors),
               box_score=jnp.asarray(rng.normal(size=(b, q)), jnp.float32) if variant == "fqdetv2" else None)
    matched = np.array([[0, 1, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0]], np.int32)
    positive = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], bool)
    ignore = np.zeros((b, q), bool)
    ignore[1, 5] = True
    num_gt = 4.0
    losses = jax.jit(lambda o: head.criterion.output_losses(o, jnp.asarray(matched), jnp.asarray(positive),
                                                             jnp.asarray(ignore), batch, K, jnp.float32(num_gt)))(out)

    cls_sum = box_sum = score_sum = 0.0
    for i in range(b):
        for j in range(q):
            x = np.asarray(out["cls"][i, j], np.float64)
            t = np.zeros(K + 1)
            if positive[i, j]:
                g, lab = batch.boxes[i, matched[i, j]], batch.labels[i, matched[i, j]]
                iou = np_iou(boxes[i, j][None], g[None])[0, 0]
                t[lab] = iou if variant == "fqdetv2" else 1.0
            else:
                t[K] = 1.0  # no-object column
            p = 1 / (1 + np.exp(-x))
            if variant == "fqdet":
                p_t = p * t + (1 - p) * (1 - t)
                cls = (0.25 * t + 0.75 * (1 - t)) * (1 - p_t) ** 2 * _np_bce(x, t)
            else:  # QFL, beta 2, soft label = IoU on the gt class
                cls = _np_bce(x, t) * np.abs(p - t) ** 2
            if not ignore[i, j]:
                cls_sum += cls.sum()
            if positive[i, j]:
                a = priors[i, j]
                if variant == "fqdet":
                    aw, ah, gw, gh = a[2] - a[0], a[3] - a[1], g[2] - g[0], g[3] - g[1]
                    target = [((g[0] + g[2]) - (a[0] + a[2])) / 2 / aw, ((g[1] + g[3]) - (a[1] + a[3])) / 2 / ah,
                              math.log(gw / aw), math.log(gh / ah)]
                    box_sum += np.abs(deltas[i, j] - np.asarray(target)).sum()
                else:
                    box_sum += _np_eiou(boxes[i, j].astype(np.float64), g.astype(np.float64))
                    target = math.log(max(iou, 1e-3) / max(1 - iou, 1e-3))  # inverse sigmoid, eps 1e-3
                    score_sum += abs(float(out["box_score"][i, j]) - target)
    norm = b if reduction == "sum" else num_gt
    w_cls, w_box = (1.0, 1.0) if variant == "fqdet" else (0.5, 1.85)
    np.testing.assert_allclose(float(losses["loss_cls"]), w_cls * cls_sum / norm, rtol=1e-4)
    np.testing.assert_allclose(float(losses["loss_box"]), w_box * box_sum / norm, rtol=1e-4)
    if variant == "fqdetv2":
        np.testing.assert_allclose(float(losses["loss_box_score"]), 0.2 * score_sum / norm, rtol=1e-4)
    else:
        assert "loss_box_score" not in losses


# --- switches -------------------------------------------------------------------------


def test_config_and_builder():
    v1, v2 = head_config("fqdet"), head_config("fqdetv2")
    assert (v1.decoder.num_points, v1.selector.num_queries, len(v1.anchors.aspect_ratios), v1.decoder.box_encoder) == (
        4, 300, 3, True)
    assert (v2.decoder.num_points, v2.selector.num_queries, len(v2.anchors.aspect_ratios), v2.decoder.box_encoder) == (
        1, 1500, 7, False)
    assert (v1.prediction.cls_net, v1.prediction.box_net, v1.inference.labels) == ("mlp", "mlp", "per_query_label")
    assert (v2.prediction.cls_net, v2.prediction.box_net, v2.inference.labels) == (
        "linear", "linear_norm_mlp", "query_class_pairs")
    model = ml_collections.ConfigDict(dict(head=dict(name="fqdet", selector=dict(num_querys=3))))
    with pytest.raises(ConfigError, match="model.head.selector.num_queries"):
        resolve_model_config(model)
    with pytest.raises(ValueError, match="iterative_refinement"):
        tiny_head(decoder__iterative_refinement=True)
    with pytest.raises(ValueError, match="matching"):
        tiny_head(matcher__matching="greedy")
    # Non-shared auxiliary heads: one set for the decoder input and one per layer (table 4.3).
    count = lambda **kw: count_variables(  # noqa: E731
        abstract_init(lambda: tiny_head(decoder__num_layers=3, **kw)))
    one = count_variables(abstract_init(lambda: tiny_head()).heads[0])
    assert count(prediction__aux_losses=True) == count()
    assert count(prediction__aux_losses=True, prediction__aux_shared=False) == count() + 3 * one


def test_option_values_name_what_they_do():
    """Unknown values, the earlier 'v1' / 'v2' / 'old' / 'new' among them, fail naming the valid ones."""
    with pytest.raises(ValueError, match=r"prediction.cls_net must be one of \('mlp', 'linear'\), got 'v2'"):
        tiny_head(prediction__cls_net="v2")
    with pytest.raises(ValueError, match=r"prediction.box_net must be one of \('mlp', 'linear_norm_mlp'\), got 'v1'"):
        tiny_head(prediction__box_net="v1")
    with pytest.raises(ValueError, match=r"inference.labels must be one of \('per_query_label', "
                                         r"'query_class_pairs'\), got 'new'"):
        tiny_head(inference__labels="new")
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_model_config(ml_collections.ConfigDict(dict(head=dict(name="fqdet", inference=dict(strategy="new")))))


def _linear(path, fan_in, fan_out):
    return {f"{path}/kernel": (fan_in, fan_out), f"{path}/bias": (fan_out,)}


def _norm(path):
    return {f"{path}/scale": (D,), f"{path}/bias": (D,)}


def _mlp(net, outputs, hidden):
    """'mlp': ``hidden`` × OneStepMLP (LN → ReLU → Linear), then the output Linear."""
    tree = {}
    for i in range(hidden):
        tree.update(_norm(f"{net}/layers/{i}/norm"), **_linear(f"{net}/layers/{i}/linear", D, D))
    return {**tree, **_linear(f"{net}/layers/{hidden}", D, outputs)}


def _linear_norm_mlp(net, outputs):
    """'linear_norm_mlp': Linear → LN → Linear → ReLU → Linear → ReLU → Linear."""
    return {**_linear(f"{net}/layers/0", D, D), **_norm(f"{net}/layers/1"), **_linear(f"{net}/layers/2", D, D),
            **_linear(f"{net}/layers/3", D, D), **_linear(f"{net}/layers/4", D, outputs)}


@pytest.mark.parametrize("cls_net,box_net,hidden", [("mlp", "mlp", 1), ("mlp", "mlp", 2),
                                                    ("linear", "linear_norm_mlp", 1), ("mlp", "linear_norm_mlp", 2)])
def test_prediction_networks_keep_the_checkpoint_parameter_tree(cls_net, box_net, hidden):
    """The option values name the networks; the parameter paths are those of the checkpoints
    written when the values were 'v1' (the 'mlp' networks) and 'v2' (FQDetV2's 'linear' and
    'linear_norm_mlp'), so they still load."""
    from msvision.checkpoint import path_name

    head = abstract_init(lambda: tiny_head(prediction__cls_net=cls_net, prediction__box_net=box_net,
                                           prediction__mlp_hidden_layers=hidden, prediction__box_scoring=True))
    state = nnx.to_pure_dict(nnx.state(head.heads, nnx.Param))
    tree = {path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    cls = _linear("0/cls", D, K + 1) if cls_net == "linear" else _mlp("0/cls", K + 1, hidden)
    box = _linear_norm_mlp("0/box", 4) if box_net == "linear_norm_mlp" else _mlp("0/box", 4, hidden)
    assert tree == {**cls, **box, **_linear_norm_mlp("0/box_score", 1)}


def test_iou_losses_take_the_thesis_weights():
    """Thesis 4.5.2: choosing a box loss brings its weight (GIoU/DIoU/CIoU 1.3, EIoU 1.85)."""
    for box, weight in (("l1", 1.0), ("giou", 1.3), ("diou", 1.3), ("ciou", 1.3), ("eiou", 1.85)):
        assert tiny_head(loss__box=box).criterion.box_loss_weight == weight
    assert tiny_head(loss__box="giou", loss__box_weight=2.0).criterion.box_loss_weight == 2.0
    assert tiny_head(loss__cls="qfl").criterion.cls_loss_weight == 0.5


@pytest.mark.parametrize("overrides", [
    dict(matcher__matching="absolute"),
    pytest.param(dict(matcher__matching="hungarian"), marks=pytest.mark.slow),
    dict(matcher__matching="auction"),
    pytest.param(dict(matcher__crowd_ignore=True, matcher__ignore_padding_anchors=True), marks=pytest.mark.slow),
    dict(prediction__aux_losses=True, prediction__aux_shared=False, decoder__iterative_refinement=True,
         loss__box="giou", decoder__num_layers=2),
    dict(inference__duplicate_removal="soft_learned", loss__cls="qfl", prediction__box_scoring=True,
         loss__box="ciou"),
    pytest.param(dict(inference__duplicate_removal="learned", loss__box="diou",
                      inference__labels="query_class_pairs"),
                 marks=pytest.mark.slow),
])
def test_ablation_switches_finite(overrides):
    head = tiny_head(**overrides)
    batch, pyramid = make_batch(), make_pyramid()
    (loss, metrics), dets = jax.jit(lambda p, b: (head.losses(p, b), head.predict(p, b)))(pyramid, batch)
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values())
    assert dets.boxes.shape == (2, 100, 4) and int(dets.num_valid.min()) > 0
    if overrides.get("matcher__matching") in ("hungarian", "auction"):
        # one-to-one: every real gt matched exactly once (2 real gts per image)
        assert float(metrics["num_pos_queries"]) == 2.0
    if "inference__duplicate_removal" in overrides:
        assert "loss_dup" in metrics


# --- training -------------------------------------------------------------------------


def _overfit(model, loss_fn, steps=60, lr=3e-3):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest, copy=True)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return losses


# FQDet in the slow selection: FQDetV2 trains through the same criterion, matcher and decoder
@pytest.mark.parametrize("variant", [pytest.param("fqdet", marks=pytest.mark.slow), "fqdetv2"])
def test_head_overfits_one_batch(variant):
    """Width 16, 2 decoder layers, 20 queries, on a fixed pyramid (about 10 s each)."""
    head = tiny_head(variant, decoder__num_layers=2)
    batch, pyramid = make_batch(), make_pyramid()
    losses = _overfit(head, lambda h: h.losses(pyramid, batch)[0])
    assert np.isfinite(losses).all() and losses[0] > 0
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def tiny_detector(variant):
    rngs = nnx.Rngs(0)
    backbone = ResNet(18, out_levels=(3, 4, 5), width=8, rngs=rngs)
    neck = FPN({l: backbone.out_channels[l] for l in (3, 4, 5)}, LEVELS, D, variant="mmdet", rngs=rngs)
    cfg = tiny_cfg(variant, decoder__num_layers=2)
    head = FQDetHead(K, neck.out_levels, D, rngs=rngs, **section_kwargs(cfg, FQDetHead, skip=("name",)))
    return Detector(backbone, neck, head)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fqdet", "fqdetv2"])
def test_detector_overfits_one_batch(variant):
    """Tiny R18(width 8)-FPN-FQDet (width 16, 2 decoder layers, 20 queries), end to end,
    60 Adam steps (20–45 s each on 2 shared CPU cores)."""
    batch = make_batch()
    losses = _overfit(tiny_detector(variant), lambda m: m.losses(batch)[0])
    assert np.isfinite(losses).all() and losses[0] > 0
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
