"""The Structure-Preserving Sparsity (SPS) container and its stage update (thesis §5.3.2).

SPS stores the active features ``[A, F]`` (updated at every stage), the passive features
``[P, F]`` (frozen cells, stored once without duplicates) and a dense id map
``[R, S, S]`` that gives, for every cell of every RoI at the current resolution
S = 14·2^s, the row of its feature in the table ``[act; pas; 0]``: actives have ids
0..A-1, passives A..A+P-1, and the pad id A+P points at a zero row (thesis §5.3.2).

Everything is per image: the head vmaps over the batch (selection is per image, thesis §5.3.3).

Fixed capacities (static shapes; R the RoI capacity of the image, K_max = 10,000 as in
thesis §5.3.3):

- stage 0: C0 = 196·R cells, all active (``sps_from_dense``), no passives;
- every update selects K = min(K_max, C0) cells (static; with A_1 = 4K >= K the same K
  is used at every later stage), so the actives are A = 4K at stages 1..3;
- the non-selected actives join the passives: P_1 = C0 - K, P_{s+1} = P_s + 3K.

Invalid slots: cells of padding RoIs (and their descendants) are real slots with finite
garbage features and ``*_valid == False``. They get the refinement logit -inf, so real
cells are always selected first; when an image has fewer than K valid cells, the
leftover picks are invalid cells (the author's code refines all cells when there are
fewer than K: DetSeg ``models/heads/seg/effseg.py``, ``EffSegHead``). Every active slot, valid or
not, occupies exactly one grid cell of its RoI's map (IdConv's reverse gather relies on
it). Mask invalid slots out of losses; scatter them with ``mode='drop'``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp

__all__ = ["SPS", "SPSCapacities", "sps_capacities", "sps_from_dense", "select_and_split", "CHILD_OFFSETS"]

# Child c of a split cell sits at (2x + dx, 2y + dy) with c = dx + 2·dy (thesis §5.3.3).
CHILD_OFFSETS = ((0, 0), (1, 0), (0, 1), (1, 1))


@flax.struct.dataclass
class SPS:
    """SPS state of one image at one resolution (a pytree).

    act: [A, F] float, active features; id i < A.
    act_valid: [A] bool, False for slots of padding RoIs.
    act_roi: [A] int32 in [0, R), the RoI (row of ``id_map``) of each active.
    act_xy: [A, 2] int32, (x, y) cell of each active at the current resolution S.
    pas: [P, F] float, passive features; id A + j.
    pas_valid: [P] bool.
    id_map: [R, S, S] int32, id of the feature covering each cell (row y, column x);
        pad id A + P is never stored in it (every cell is covered), it is what
        out-of-grid neighbours read.
    """

    act: jax.Array
    act_valid: jax.Array
    act_roi: jax.Array
    act_xy: jax.Array
    pas: jax.Array
    pas_valid: jax.Array
    id_map: jax.Array

    @property
    def num_active(self) -> int:
        return self.act.shape[0]

    @property
    def num_passive(self) -> int:
        return self.pas.shape[0]

    @property
    def pad_id(self) -> int:
        return self.num_active + self.num_passive

    @property
    def resolution(self) -> int:
        return self.id_map.shape[-1]

    def feature_table(self) -> jax.Array:
        """[A + P + 1, F] = [act; pas; 0], the table IdConv gathers from (row A+P is the pad)."""
        if self.act.shape[-1] != self.pas.shape[-1]:
            raise ValueError(f"active features have {self.act.shape[-1]} channels, passives {self.pas.shape[-1]}")
        dtype = jnp.result_type(self.act, self.pas)
        return jnp.concatenate([self.act.astype(dtype), self.pas.astype(dtype),
                                jnp.zeros((1, self.act.shape[-1]), dtype)], axis=0)


class SPSCapacities(NamedTuple):
    """Static buffer sizes of one image: per stage s = 0..num_stages, the actives A_s,
    passives P_s and the number K_s of cells selected to go from stage s to s+1."""

    active: tuple[int, ...]
    passive: tuple[int, ...]
    selected: tuple[int, ...]


def sps_capacities(num_rois: int, max_selected: int | Sequence[int] = 10_000, num_stages: int = 3,
                   base_resolution: int = 14) -> SPSCapacities:
    """Static SPS capacities per image: C0 = 196 R, K = min(K_max, C0), A = 4K, P_{s+1} = P_s + A_s - K.

    ``max_selected`` is K_max of every stage, or one K_max per stage."""
    limits = (max_selected,) * num_stages if isinstance(max_selected, int) else tuple(max_selected)
    if len(limits) != num_stages:
        raise ValueError(f"{num_stages} stages need {num_stages} values of max_selected, got {max_selected}")
    active = [num_rois * base_resolution ** 2]
    passive = [0]
    selected = []
    for limit in limits:
        k = min(int(limit), active[-1])
        selected.append(k)
        passive.append(passive[-1] + active[-1] - k)
        active.append(4 * k)
    return SPSCapacities(tuple(active), tuple(passive), tuple(selected))


def sps_from_dense(features: jax.Array, roi_valid: jax.Array) -> SPS:
    """Stage-0 SPS: every cell of the dense RoI maps is active, no passives.

    Args:
        features: [R, S, S, F] dense RoI features (row y, column x).
        roi_valid: [R] bool.

    Returns:
        SPS with A = R·S², active id r·S² + y·S + x, P = 0.
    """
    rois, size, size_x, channels = features.shape
    if size != size_x:
        raise ValueError(f"RoI maps must be square, got {features.shape}")
    ids = jnp.arange(rois * size * size, dtype=jnp.int32)
    y, x = jnp.meshgrid(jnp.arange(size, dtype=jnp.int32), jnp.arange(size, dtype=jnp.int32), indexing="ij")
    return SPS(
        act=features.reshape(-1, channels),
        act_valid=jnp.repeat(roi_valid.astype(bool), size * size),
        act_roi=ids // (size * size),
        act_xy=jnp.tile(jnp.stack([x.reshape(-1), y.reshape(-1)], -1), (rois, 1)),
        pas=jnp.zeros((0, channels), features.dtype),
        pas_valid=jnp.zeros((0,), bool),
        id_map=ids.reshape(rois, size, size),
    )


def select_and_split(sps: SPS, refine_logits: jax.Array, num_selected: int,
                     limit: jax.Array | int | None = None) -> tuple[SPS, jax.Array]:
    """One SPS stage update: select, split into 2x2 children, remap and upsample the id map.

    Selection (thesis §5.3.3): the K active cells with the highest
    refinement logit, invalid cells at -inf; picks sorted by index (the code's order).
    Split (thesis §5.3.3): the r-th selected cell's children get ids 4r + c at (2x+dx, 2y+dy),
    c = dx + 2·dy; then the old passives, then the non-selected actives in index order
    as new passives; the pad id becomes 4K + P_new. The id map is remapped through the
    table ``new_id[old]``, upsampled 2x (nearest) and the child index c is added on
    the actives' cells.

    Args:
        sps: the current state, A actives, P passives, resolution S.
        refine_logits: [A] float refinement logits of the actives.
        num_selected: static K <= A.
        limit: optional dynamic bound (int32 scalar) on the cells actually refined: picks
            of score rank >= ``limit`` keep their child slots but are marked invalid
            (``act_valid`` False), which the head treats as passive cells (a budget
            tied to the number of valid RoIs, ``EffSegHead(selected_per_roi=...)``).

    Returns:
        (new SPS with 4K actives, P + A - K passives, resolution 2S, whose ``act`` holds
        every child's PARENT feature (the head adds its child MLP, thesis §5.3.3),
        selected [K] int32 active indices of the parents, ascending).
    """
    num_active, num_passive = sps.num_active, sps.num_passive
    k = int(num_selected)
    if not 0 < k <= num_active:
        raise ValueError(f"cannot select {k} of {num_active} active cells")
    score = jnp.where(sps.act_valid, refine_logits.astype(jnp.float32), -jnp.inf)
    _, top = jax.lax.top_k(score, k)  # descending score: position = rank
    order = jnp.argsort(top)
    selected = top[order].astype(jnp.int32)
    within = jnp.ones((k,), bool) if limit is None else order < limit
    is_selected = jnp.zeros((num_active,), bool).at[selected].set(True)
    (rest,) = jnp.nonzero(~is_selected, size=num_active - k, fill_value=0)
    rest = rest.astype(jnp.int32)

    # new_id[old] for old ids 0..A+P (the last one the pad); children get 4r, +c below.
    rank = jnp.cumsum(is_selected, dtype=jnp.int32) - 1
    rest_rank = jnp.cumsum(~is_selected, dtype=jnp.int32) - 1
    new_passive_base = 4 * k + num_passive
    new_id = jnp.concatenate([
        jnp.where(is_selected, 4 * rank, new_passive_base + rest_rank),
        4 * k + jnp.arange(num_passive, dtype=jnp.int32),
        jnp.full((1,), new_passive_base + num_active - k, jnp.int32),
    ])
    is_parent = jnp.concatenate([is_selected, jnp.zeros((num_passive + 1,), bool)])

    up = jnp.repeat(jnp.repeat(sps.id_map, 2, axis=1), 2, axis=2)  # [R, 2S, 2S]
    size = up.shape[-1]
    y, x = jnp.meshgrid(jnp.arange(size, dtype=jnp.int32), jnp.arange(size, dtype=jnp.int32), indexing="ij")
    child = (x % 2) + 2 * (y % 2)
    id_map = new_id[up] + jnp.where(is_parent[up], child, 0)

    offsets = jnp.asarray(CHILD_OFFSETS, jnp.int32)  # [4, 2] (dx, dy)
    act_xy = (2 * sps.act_xy[selected][:, None, :] + offsets[None]).reshape(4 * k, 2)
    new = SPS(
        act=jnp.repeat(sps.act[selected], 4, axis=0),
        act_valid=jnp.repeat(sps.act_valid[selected] & within, 4),
        act_roi=jnp.repeat(sps.act_roi[selected], 4),
        act_xy=act_xy,
        pas=jnp.concatenate([sps.pas, sps.act[rest].astype(sps.pas.dtype)], axis=0),
        pas_valid=jnp.concatenate([sps.pas_valid, sps.act_valid[rest]]),
        id_map=id_map,
    )
    return new, selected
