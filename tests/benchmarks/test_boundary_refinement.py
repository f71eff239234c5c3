"""``benchmarks/boundary_refinement.py``: the outline counts equal a direct numpy count, and
EffSeg's cells land where their (roi, x, y) say."""


import jax.numpy as jnp
import numpy as np

from benchmark_modules import load_benchmark

br = load_benchmark("boundary_refinement")


def test_counts_equal_a_direct_count_and_skip_invalid_rois():
    rng = np.random.default_rng(0)
    shape = (2, 3, 8, 8)
    logits = rng.normal(size=shape).astype(np.float32)
    refined, seg_t, outline = (rng.random(shape) > 0.5 for _ in range(3))
    valid = np.array([[True, False, True], [True, True, False]])
    counts = br.grid_counts(*map(jnp.asarray, (logits, refined, seg_t, outline, valid)))
    v = np.broadcast_to(valid[:, :, None, None], shape)
    correct = (logits > 0) == seg_t
    o = outline & v
    assert int(counts["outline"]) == o.sum()
    assert int(counts["refined"]) == (refined & v).sum()
    assert int(counts["refined_outline"]) == (refined & o).sum()
    assert int(counts["correct_refined"]) == (correct & refined & o).sum()
    assert int(counts["correct_unrefined"]) == (correct & ~refined & o).sum()


def test_scatter_places_valid_cells_only():
    cells = dict(valid=jnp.asarray([[True, True, False]]), roi=jnp.asarray([[1, 0, 0]]),
                 xy=jnp.asarray([[[3, 1], [0, 2], [2, 2]]]))
    out = np.asarray(br.scatter_cells(cells, num_rois=2, size=4))
    expected = np.zeros((1, 2, 4, 4), bool)
    expected[0, 1, 1, 3] = True  # (x=3, y=1) of RoI 1
    expected[0, 0, 2, 0] = True
    np.testing.assert_array_equal(out, expected)
