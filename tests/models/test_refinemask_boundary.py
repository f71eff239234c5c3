"""RefineMask++ boundary bands, align-corners upsampling, BAR loss and band-overwrite inference
against numpy written from their definitions (RefineMask's ``generate_block_target``,
``BARCrossEntropyLoss`` and ``simple_test_mask``; DetSeg ``models/modules/refine_mask.py``)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from msvision.models.heads.refinemask import RefineMaskCriterion
from msvision.models.heads.refinemask.boundary import boundary_band, upsample2x_corners
from msvision.models.heads.refinemask.postprocess import assemble_mask_logits


def numpy_band(mask, width):
    """Definition: a cell is in the band when more than 0.1·(2w+1)² cells of its (2w+1)² window
    hold the other value, cells outside the grid counting as background."""
    h, w = mask.shape
    k2 = (2 * width + 1) ** 2
    out = np.zeros_like(mask, bool)
    for i in range(h):
        for j in range(w):
            other = 0
            for di in range(-width, width + 1):
                for dj in range(-width, width + 1):
                    y, x = i + di, j + dj
                    value = bool(mask[y, x]) if 0 <= y < h and 0 <= x < w else False
                    other += value != bool(mask[i, j])
            out[i, j] = other / k2 > 0.1
    return out


def random_masks(rng, n, size):
    """Blobs, thin lines, isolated pixels and masks touching the border."""
    masks = []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(2, size / 2)]
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        m ^= rng.random((size, size)) < 0.05
        m[rng.integers(size)] = True
        masks.append(m)
    return np.stack(masks)


@pytest.mark.parametrize("width", [1, 2])
def test_boundary_band_matches_its_definition(width):
    rng = np.random.default_rng(width)
    masks = random_masks(rng, 4, 13)
    got = np.asarray(jax.jit(boundary_band, static_argnums=1)(jnp.asarray(masks), width))
    for m, g in zip(masks, got):
        np.testing.assert_array_equal(g, numpy_band(m, width))


def test_width_one_band_is_the_morphological_boundary():
    """w = 1: fg cells with a bg 8-neighbour (outside = bg) and bg cells with a fg 8-neighbour."""
    masks = random_masks(np.random.default_rng(3), 4, 17)
    got = np.asarray(boundary_band(jnp.asarray(masks), 1))
    box = np.ones((3, 3), bool)
    for m, g in zip(masks, got):
        inner = m & ~ndimage.binary_erosion(m, box, border_value=0)
        outer = ~m & ndimage.binary_dilation(m, box)
        np.testing.assert_array_equal(g, inner | outer)


def test_width_two_band_is_a_count_not_a_distance():
    """A fg cell two cells from a straight edge is in the band (5 bg cells in its window);
    one next to a single isolated bg cell is not (1 of 25)."""
    m = np.ones((13, 13), bool)
    m[:, :2] = False  # straight edge: columns 0-1 background
    m[6, 8] = False  # an isolated hole
    band = np.asarray(boundary_band(jnp.asarray(m), 2))
    assert band[4, 2] and band[4, 3]  # 1 and 2 columns from the edge (10 and 5 bg cells)
    assert not band[4, 5]  # 4 columns from the edge
    assert band[6, 8]  # the hole itself (24 fg cells)
    assert not band[6, 9] and not band[5, 8] and not band[7, 10]  # around the hole: 1 bg cell of 25


def numpy_upsample_corners(x):
    size = x.shape[-1]
    out = np.zeros(x.shape[:-2] + (2 * size, 2 * size))
    scale = (size - 1) / (2 * size - 1)

    def taps(i):
        src = i * scale
        lo = min(int(math.floor(src)), size - 1)
        return lo, min(lo + 1, size - 1), src - lo

    for i in range(2 * size):
        y0, y1, fy = taps(i)
        for j in range(2 * size):
            x0, x1, fx = taps(j)
            out[..., i, j] = ((1 - fy) * ((1 - fx) * x[..., y0, x0] + fx * x[..., y0, x1])
                              + fy * ((1 - fx) * x[..., y1, x0] + fx * x[..., y1, x1]))
    return out


def test_upsample2x_corners_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 3, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(upsample2x_corners(jnp.asarray(x)), numpy_upsample_corners(x.astype(np.float64)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.oracle
def test_upsample2x_corners_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 5)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear",
                                               align_corners=True).numpy()
    np.testing.assert_allclose(upsample2x_corners(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)


def bce(logit, target):
    logit = np.asarray(logit, np.float64)
    return np.maximum(logit, 0.0) - logit * target + np.log1p(np.exp(-np.abs(logit)))


def numpy_refine(previous, current, width=1):
    """Released inference step: keep the upsampled previous logits where up(1 - band) >= 0.5."""
    band = numpy_band(previous >= 0, width)
    keep = numpy_upsample_corners((~band).astype(np.float64)) >= 0.5
    return np.where(keep, numpy_upsample_corners(previous.astype(np.float64)), current)


def stage_case(seed, batch=2, rois=3, base=4):
    """Logits of 4 stages at base·2^s (the last one as if upsampled) and targets: discs, the
    logits a noisy signed distance to a slightly different disc (thin boundary bands)."""
    rng = np.random.default_rng(seed)
    sizes = [base * 2 ** s for s in range(4)]
    discs = rng.uniform(0.3, 0.7, (batch, rois, 3))
    stages, targets = [], []
    for n in sizes:
        yy, xx = (np.mgrid[:n, :n] + 0.5) / n
        cy, cx, rad = (discs[..., i, None, None] for i in range(3))
        inside = (rad / 2) ** 2 - (yy - cy) ** 2 - (xx - cx) ** 2  # [B, R, n, n]
        targets.append(inside > 0)
        guess = (rad / 2.2) ** 2 - (yy - cy - 0.03) ** 2 - (xx - cx) ** 2
        stages.append((guess * 40 + rng.normal(size=(batch, rois, n, n)) * 0.3).astype(np.float32))
    return stages, targets


def test_bar_loss_matches_numpy():
    """Stages 0, 1: BCE over every cell; stages 2, 3: BCE over up(band_2(P_{s-1}) | band_2(T_{s-1}))
    with P_1 = m_1 >= 0 and P_2 the width-1 refinement of m_1 by m_2; per image mean x RoIs,
    averaged over images; weights 0.5/0.75/0.75/1 (as released)."""
    stages, targets = stage_case(0)
    valid = np.array([[True, True, False], [True, False, False]])
    crit = RefineMaskCriterion()
    out = jax.jit(lambda s, t, v: crit(s, t, v))([jnp.asarray(x) for x in stages],
                                                 [jnp.asarray(t) for t in targets], jnp.asarray(valid))
    weights = (0.5, 0.75, 0.75, 1.0)
    total = 0.0
    per_stage = np.zeros(4)
    for b in range(2):
        n_rois = valid[b].sum()
        for s in range(4):
            num, den = 0.0, 0
            for r in np.flatnonzero(valid[b]):
                logits, target = stages[s][b, r], targets[s][b, r]
                if s <= 1:
                    region = np.ones_like(target)
                else:
                    running = stages[1][b, r] if s == 2 else numpy_refine(stages[1][b, r], stages[2][b, r])
                    band = numpy_band(running >= 0, 2) | numpy_band(targets[s - 1][b, r], 2)
                    region = numpy_upsample_corners(band.astype(np.float64)) >= 0.5
                num += bce(logits, target)[region].sum()
                den += region.sum()
            per_stage[s] += num / max(den, 1) * n_rois / 2
    total = float(np.dot(weights, per_stage))
    np.testing.assert_allclose(out["loss_mask"], total, rtol=1e-5)
    for s in range(4):
        np.testing.assert_allclose(out[f"mask/loss_{s}"], per_stage[s], rtol=1e-5)
    assert 0 < float(out["mask/band_cells_3"]) < 3 * 32 * 32  # a band, not the whole grid


def test_inference_overwrites_only_the_width_one_band():
    stages, _ = stage_case(1)
    got = np.asarray(jax.jit(assemble_mask_logits)([jnp.asarray(x) for x in stages]))
    assert got.shape == (2, 3, 32, 32)
    for b in range(2):
        for r in range(3):
            expected = numpy_refine(numpy_refine(stages[1][b, r], stages[2][b, r]), stages[3][b, r])
            np.testing.assert_allclose(got[b, r], expected, rtol=1e-5, atol=1e-5)
            # stage 0 plays no part; most cells come from the upsampled previous logits
            assert (got[b, r] == stages[3][b, r]).mean() < 0.7
