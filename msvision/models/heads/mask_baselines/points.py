"""PointRend point selection (Kirillov et al. 2020; mmdet ``MaskPointHead``).

Point coordinates are ``(x, y)`` in a RoI's ``[0, 1]²`` frame: (0, 0) the box's top-left
corner, (1, 1) its bottom-right corner; cell (i, j) of an ``S × S`` grid is centred at
``((j + ½)/S, (i + ½)/S)``. Reading a grid at a point is mmcv ``point_sample``
(``grid_sample``, bilinear, ``align_corners=False``, zeros outside).

- :func:`point_sample`: grids ``[N, S, S(, C)]`` at points ``[N, P, 2]``.
- :func:`uncertain_points_with_randomness`: training points (mmdet/detectron2
  ``get_uncertain_point_coords_with_randomness``): ``oversample · P`` uniform random
  candidates, the ``⌊importance · P⌋`` most uncertain of them (uncertainty ``-|logit|``
  of the coarse logit read at the candidate), plus uniform random points for the rest.
- :func:`subdivision_points`: inference (``get_roi_rel_points_test``): the ``P`` most
  uncertain cells of a grid (after the ×2 upsampling), as flat indices and cell centres.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msvision.ops.roi_align import sample_bilinear

Array = jax.Array


def point_sample(grid: Array, points: Array) -> Array:
    """``grid [N, S, S]`` or ``[N, S, S, C]`` read at ``points [N, P, 2]`` (x, y) in ``[0, 1]²``
    → ``[N, P]`` or ``[N, P, C]`` float32 (bilinear, zeros outside the grid)."""
    squeeze = grid.ndim == 3
    values = sample_bilinear(grid[..., None] if squeeze else grid, points.astype(jnp.float32))
    return values[..., 0] if squeeze else values


def uncertainty(logits: Array) -> Array:
    """PointRend's uncertainty of a (class-specific) mask logit: ``-|logit|`` (highest at 0)."""
    return -jnp.abs(logits)


def select_uncertain_points(logits: Array, candidates: Array, num_uncertain: int) -> Array:
    """The ``num_uncertain`` candidates of highest uncertainty (descending), per RoI.

    Args:
      logits: ``[N, S, S]`` float coarse logits of the RoI's class.
      candidates: ``[N, M, 2]`` float (x, y) in ``[0, 1]²``.

    Returns:
      ``[N, num_uncertain, 2]`` float32.
    """
    scores = uncertainty(point_sample(logits, candidates))  # [N, M]
    _, index = jax.lax.top_k(scores, num_uncertain)
    return jnp.take_along_axis(candidates.astype(jnp.float32), index[..., None], axis=1)


def uncertain_points_with_randomness(key: Array, logits: Array, num_points: int, oversample_ratio: float = 3.0,
                                     importance_sample_ratio: float = 0.75) -> Array:
    """Training points of every RoI (released config: 196 points, oversample 3, importance 0.75).

    Args:
      key: a PRNG key.
      logits: ``[N, S, S]`` float coarse logits of each RoI's ground-truth class (no
        gradient flows through the choice).

    Returns:
      ``[N, num_points, 2]`` float32 (x, y) in ``[0, 1]²``: the uncertain points first,
      then the uniform random ones.
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"need oversample_ratio >= 1 and importance ratio in [0, 1], got "
                         f"{oversample_ratio}, {importance_sample_ratio}")
    n = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    key_candidates, key_random = jax.random.split(key)
    candidates = jax.random.uniform(key_candidates, (n, num_sampled, 2), jnp.float32)
    chosen = select_uncertain_points(jax.lax.stop_gradient(logits), candidates, num_uncertain)
    random = jax.random.uniform(key_random, (n, num_points - num_uncertain, 2), jnp.float32)
    return jnp.concatenate([chosen, random], axis=1)


def subdivision_points(logits: Array, num_points: int) -> tuple[Array, Array]:
    """The ``num_points`` most uncertain cells of every RoI's grid (one subdivision step).

    Args:
      logits: ``[N, S, S]`` float (already upsampled) logits of each RoI's class.

    Returns:
      ``index [N, P] int32`` flat cell indices ``i·S + j`` (descending uncertainty) and
      ``points [N, P, 2] float32`` their centres ``((j + ½)/S, (i + ½)/S)``;
      ``P = min(num_points, S²)``.
    """
    n, size, _ = logits.shape
    p = min(int(num_points), size * size)
    _, index = jax.lax.top_k(uncertainty(logits.reshape(n, size * size)), p)
    index = index.astype(jnp.int32)
    xs = ((index % size).astype(jnp.float32) + 0.5) / size
    ys = ((index // size).astype(jnp.float32) + 0.5) / size
    return index, jnp.stack([xs, ys], axis=-1)


def overwrite_points(logits: Array, index: Array, values: Array) -> Array:
    """``logits [N, S, S]`` with the cells ``index [N, P]`` (flat) set to ``values [N, P]``."""
    n, size, _ = logits.shape
    flat = logits.reshape(n, size * size)
    flat = flat.at[jnp.arange(n)[:, None], index].set(values.astype(flat.dtype))
    return flat.reshape(n, size, size)


__all__ = ["point_sample", "uncertainty", "select_uncertain_points", "uncertain_points_with_randomness",
           "subdivision_points", "overwrite_points"]
