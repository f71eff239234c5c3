"""SPS container: selection / split / remap against a numpy loop, and IdConv/SFM on SPS maps
against dense convolutions (lax.conv_general_dilated) of the equivalent dense maps."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from msvision.ops.sps import SPS, select_and_split, sfm, sps_capacities, sps_from_dense
from msvision.ops.sps.id_conv import id_conv
from msvision.ops.sps.reference import dense_conv3x3

DILATIONS = (1, 3, 5)
split = jax.jit(select_and_split, static_argnums=2)


def numpy_select_and_split(sps: SPS, logits, k):
    """The stage update of ``select_and_split`` (thesis §5.3.3) written with Python loops."""
    act, act_valid, act_roi, act_xy = (np.asarray(x) for x in (sps.act, sps.act_valid, sps.act_roi, sps.act_xy))
    pas, pas_valid, id_map = np.asarray(sps.pas), np.asarray(sps.pas_valid), np.asarray(sps.id_map)
    num_active, num_passive = len(act), len(pas)
    score = np.where(act_valid, np.asarray(logits, np.float64), -np.inf)
    chosen = sorted(np.argsort(-score, kind="stable")[:k].tolist())
    rest = [i for i in range(num_active) if i not in set(chosen)]
    rois, size, _ = id_map.shape
    new_map = np.zeros((rois, 2 * size, 2 * size), np.int64)
    for r in range(rois):
        for y in range(2 * size):
            for x in range(2 * size):
                old = id_map[r, y // 2, x // 2]
                if old < num_active and old in chosen:
                    new_map[r, y, x] = 4 * chosen.index(old) + (x % 2) + 2 * (y % 2)
                elif old < num_active:
                    new_map[r, y, x] = 4 * k + num_passive + rest.index(old)
                else:
                    new_map[r, y, x] = 4 * k + (old - num_active)
    children = [(a, c) for a in chosen for c in range(4)]
    return dict(
        act=np.stack([act[a] for a, _ in children]),
        act_valid=np.array([act_valid[a] for a, _ in children]),
        act_roi=np.array([act_roi[a] for a, _ in children]),
        act_xy=np.array([[2 * act_xy[a][0] + c % 2, 2 * act_xy[a][1] + c // 2] for a, c in children]),
        pas=np.concatenate([pas, act[rest]]),
        pas_valid=np.concatenate([pas_valid, act_valid[rest]]),
        id_map=new_map,
    ), chosen


@pytest.mark.parametrize("ks", [(10, 12), (40, 150)])  # the second: more picks than valid cells
def test_select_and_split_matches_numpy_loop(ks):
    rng = np.random.default_rng(sum(ks))
    rois, size, channels = 3, 4, 2
    features = rng.standard_normal((rois, size, size, channels)).astype(np.float32)
    roi_valid = np.array([True, False, True])
    sps = sps_from_dense(jnp.asarray(features), jnp.asarray(roi_valid))
    assert sps.pad_id == rois * size * size and sps.num_passive == 0
    for k in ks:
        logits = rng.permutation(sps.num_active).astype(np.float32)  # distinct values
        expected, chosen = numpy_select_and_split(sps, logits, k)
        sps, selected = split(sps, jnp.asarray(logits), k)
        np.testing.assert_array_equal(selected, chosen)
        for name, value in expected.items():
            np.testing.assert_array_equal(getattr(sps, name), value, err_msg=name)
    # Every id is used by the map or is an invalid leftover; the pad id never is.
    assert int(jnp.max(sps.id_map)) < sps.pad_id
    assert sps.num_active == 4 * ks[-1]


def test_selection_prefers_every_valid_cell():
    """With K >= the number of valid cells, all valid cells are refined whatever their logit."""
    features = jnp.zeros((2, 2, 2, 1))
    sps = sps_from_dense(features, jnp.asarray([False, True]))
    logits = jnp.asarray([9.0, 9.0, 9.0, 9.0, -5.0, -6.0, -7.0, -8.0])
    _, selected = split(sps, logits, 5)
    assert set(np.asarray(selected).tolist()) >= {4, 5, 6, 7}


def test_capacities_follow_the_spec_table():
    caps = sps_capacities(100)
    c0, k = 196 * 100, 10_000
    assert caps.active == (c0, 4 * k, 4 * k, 4 * k)
    assert caps.selected == (k, k, k)
    assert caps.passive == (0, c0 - k, c0 - k + 3 * k, c0 - k + 6 * k)
    small = sps_capacities(2, max_selected=10_000)
    assert small.selected[0] == 2 * 196 and small.passive[1] == 0
    staged = sps_capacities(10, max_selected=(500, 1_000, 3_000))
    assert staged.selected == (500, 1_000, 3_000) and staged.active == (1960, 2000, 4000, 12000)
    assert staged.passive == (0, 1460, 1460 + 2000 - 1_000, 1460 + 1000 + 4000 - 3_000)
    with pytest.raises(ValueError, match="3 values"):
        sps_capacities(10, max_selected=(500, 1_000))


def random_sfm_weights(rng, channels, out_channels, scale=0.3):
    weights = (scale * rng.standard_normal((3, 9 * channels, out_channels))).astype(np.float32)
    biases = (0.1 * rng.standard_normal((3, out_channels))).astype(np.float32)
    return jnp.asarray(weights), jnp.asarray(biases)


def scatter_dense(sps: SPS) -> jax.Array:
    """Dense [R, S, S, F] map with every active written at its cell (all cells active)."""
    rois, size = sps.id_map.shape[0], sps.resolution
    dense = jnp.zeros((rois, size, size, sps.act.shape[-1]), sps.act.dtype)
    return dense.at[sps.act_roi, sps.act_xy[:, 1], sps.act_xy[:, 0]].set(sps.act)


def nearest_up(dense):
    return jnp.repeat(jnp.repeat(dense, 2, axis=1), 2, axis=2)


@jax.jit
def conv_outputs(sps: SPS, dense, weights, biases):
    """(IdConv per dilation, dense conv per dilation at the actives, SFM, dense SFM), one compile."""
    table = sps.feature_table()
    args = (sps.id_map, sps.act_xy, sps.act_roi)
    at_actives = lambda out: out[sps.act_roi, sps.act_xy[:, 1], sps.act_xy[:, 0]]
    ours = [id_conv(table, *args, weights[i], biases[i], d) for i, d in enumerate(DILATIONS)]
    theirs = [at_actives(dense_conv3x3(dense, weights[i], biases[i], d)) for i, d in enumerate(DILATIONS)]
    ours_sfm = sfm(table, *args, weights, biases, DILATIONS, impl="xla")
    theirs_sfm = sum(jax.nn.relu(t) for t in theirs)
    return ours, theirs, ours_sfm, theirs_sfm


def check_convs_against_dense(sps: SPS, dense, rng):
    weights, biases = random_sfm_weights(rng, dense.shape[-1], 3)
    ours, theirs, ours_sfm, theirs_sfm = conv_outputs(sps, dense, weights, biases)
    for d, actual, expected in zip(DILATIONS, ours, theirs):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5, err_msg=f"dilation {d}")
    np.testing.assert_allclose(ours_sfm, theirs_sfm, rtol=1e-5, atol=1e-5)


def test_all_cells_active_equals_dense_convolution_through_two_updates():
    rng = np.random.default_rng(0)
    rois, size, channels = 2, 3, 4
    dense = jnp.asarray(rng.standard_normal((rois, size, size, channels)).astype(np.float32))
    sps = sps_from_dense(dense, jnp.ones((rois,), bool))
    check_convs_against_dense(sps, dense, rng)
    for _ in range(2):
        logits = jnp.asarray(rng.standard_normal(sps.num_active).astype(np.float32))
        sps, _ = split(sps, logits, sps.num_active)  # K = all cells
        assert sps.num_passive == 0
        # The children start as their parents: the dense map is the upsampled parent map.
        dense = nearest_up(dense)
        np.testing.assert_array_equal(scatter_dense(sps), dense)
        np.testing.assert_array_equal(sps.feature_table()[sps.id_map], dense)
        # Then every child changes (the head's child MLP); compare on the new dense map.
        sps = sps.replace(act=sps.act + jnp.asarray(rng.standard_normal(sps.act.shape).astype(np.float32)))
        dense = scatter_dense(sps)
        check_convs_against_dense(sps, dense, rng)


@pytest.mark.parametrize("ks", [(7, 9), (18, 40)])
def test_passive_neighbours_match_nearest_upsampled_dense_map(ks):
    """Partial selection: the dense map is built independently of the id map, by
    nearest-upsampling the previous dense map (passives keep their value over their
    2x2, 4x4 areas) and writing the new actives at their cells."""
    rng = np.random.default_rng(ks[0])
    rois, size, channels = 3, 4, 3
    dense = jnp.asarray(rng.standard_normal((rois, size, size, channels)).astype(np.float32))
    sps = sps_from_dense(dense, jnp.asarray([True, True, False]))
    for k in ks:
        logits = jnp.asarray(rng.standard_normal(sps.num_active).astype(np.float32))
        sps, _ = split(sps, logits, k)
        sps = sps.replace(act=sps.act + jnp.asarray(rng.standard_normal(sps.act.shape).astype(np.float32)))
        dense = nearest_up(dense).at[sps.act_roi, sps.act_xy[:, 1], sps.act_xy[:, 0]].set(sps.act)
        np.testing.assert_array_equal(sps.feature_table()[sps.id_map], dense)
        check_convs_against_dense(sps, dense, rng)
    assert sps.num_passive > 0


def test_batched_by_vmap_equals_per_image():
    """The head vmaps the per-image SPS over the batch: selection and the SFM (with its
    custom VJP) must batch to the per-image results."""
    rng = np.random.default_rng(21)
    rois, size, channels = 2, 3, 3
    dense = jnp.asarray(rng.standard_normal((2, rois, size, size, channels)).astype(np.float32))
    valid = jnp.asarray([[True, True], [True, False]])
    logits = jnp.asarray(rng.standard_normal((2, rois * size * size)).astype(np.float32))
    weights, biases = random_sfm_weights(rng, channels, 4)

    def per_image(features, roi_valid, refine):
        sps, _ = select_and_split(sps_from_dense(features, roi_valid), refine, 7)  # traced: no nested jit
        return jax.value_and_grad(lambda w: jnp.sum(
            sfm(sps.feature_table(), sps.id_map, sps.act_xy, sps.act_roi, w, biases, impl="xla") ** 2))(weights)

    batched = jax.jit(jax.vmap(per_image))(dense, valid, logits)
    single_image = jax.jit(per_image)
    for b in range(2):
        single = single_image(dense[b], valid[b], logits[b])
        np.testing.assert_allclose(batched[0][b], single[0], rtol=1e-5)
        np.testing.assert_allclose(batched[1][b], single[1], rtol=1e-5, atol=1e-5)
