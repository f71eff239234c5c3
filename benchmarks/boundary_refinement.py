"""Which outline cells a refining mask head refines, and how well: EffSeg against PointRend++.

Both heads end by overwriting the upsampled coarse logits at a chosen set of cells of the
finest grids: EffSeg at the children of the cells its refinement logits select (thesis
5.3.3; a cell left out at one stage stays out), PointRend++ at the most uncertain points
of each subdivision step (any cell of the grid). On the validation images, with the
detector's positive queries as RoIs (the training RoIs, every one with its ground-truth
object) and the ground truth read at the cell centres, this counts per grid (56², 112²):

- ``coverage``: the share of the outline cells (cells holding foreground and background,
  EffSeg's refinement target) that the head refined at that grid;
- ``on_outline``: the share of the refined cells that are outline cells;
- ``acc_refined`` / ``acc_unrefined``: the accuracy of the head's mask (the logits after that
  grid's step; the final mask at 112²) on the outline cells it refined / left unrefined;
- ``acc_outline``: on all outline cells.

A head that refines well but too few cells has high ``acc_refined`` and low ``coverage``.

    python benchmarks/boundary_refinement.py \\
        effseg=configs/effseg/large_effseg.py:runs/large/effseg_s0 \\
        pointrend=configs/effseg/large_pointrend.py:runs/large/pointrend_s0 [--json out.json]

A run is ``NAME=CONFIG:WORKDIR``; ``--config.`` overrides apply to every run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msvision import config as config_lib  # noqa: E402
from msvision import config_sections  # noqa: E402
from msvision.checkpoint import find_checkpoint_step  # noqa: E402
from msvision.inference.restore import restore_for_inference  # noqa: E402
from msvision.models.heads.mask_baselines.class_logits import pick_class  # noqa: E402
from msvision.models.heads.mask_baselines.points import overwrite_points, subdivision_points  # noqa: E402
from msvision.models.heads.roi_mask.postprocess import upsample2x  # noqa: E402
from msvision.models.heads.roi_mask.rois import gather_train_rois, select_train_rois  # noqa: E402
from msvision.models.heads.roi_mask.targets import mask_targets  # noqa: E402
from msvision.train import data_setup  # noqa: E402
from msvision.train import sharding as sharding_lib  # noqa: E402

GRIDS = (56, 112)
COUNTS = ("outline", "refined", "refined_outline", "correct_refined", "correct_unrefined")


def grid_counts(logits, refined, seg_t, outline, valid) -> dict:
    """Counts over the valid RoIs' cells of one grid (all ``[B, R, S, S]``; ``valid [B, R]``)."""
    v = valid[:, :, None, None]
    correct = (logits > 0) == seg_t
    outline, refined = outline & v, refined & v
    return dict(outline=jnp.sum(outline), refined=jnp.sum(refined), refined_outline=jnp.sum(refined & outline),
                correct_refined=jnp.sum(correct & refined & outline),
                correct_unrefined=jnp.sum(correct & ~refined & outline))


def scatter_cells(cells: dict, num_rois: int, size: int) -> jax.Array:
    """``[B, R, S, S]`` bool: the valid cells of one EffSeg stage."""
    batch = cells["valid"].shape[0]
    roi = jnp.where(cells["valid"], cells["roi"], num_rois)
    out = jnp.zeros((batch, num_rois, size, size), bool)
    return out.at[jnp.arange(batch)[:, None], roi, cells["xy"][..., 1], cells["xy"][..., 0]].set(True, mode="drop")


def effseg_grids(model, pyramid, batch, queries, capacity):
    head = model.seg_head
    rois = select_train_rois(queries, capacity)
    take = lambda x: jnp.take_along_axis(x, rois.query_index[..., None], axis=1)  # noqa: E731
    boxes = take(queries.boxes).astype(jnp.float32)
    stages = head(pyramid, batch.image_sizes, take(queries.queries), boxes, rois.valid)
    out, logits = {}, None
    base = head.roi_resolution
    for s, cells in enumerate(stages):
        size = base * 2 ** s
        logits = (jnp.zeros((cells["seg"].shape[0], capacity, base, base), jnp.float32) if s == 0
                  else upsample2x(logits))
        roi = jnp.where(cells["valid"], cells["roi"], capacity)
        logits = logits.at[jnp.arange(logits.shape[0])[:, None], roi, cells["xy"][..., 1], cells["xy"][..., 0]].set(
            cells["seg"], mode="drop")
        if size in GRIDS:
            out[size] = (logits, scatter_cells(cells, capacity, size))
    return out, boxes, rois.gt_index, rois.valid


def pointrend_grids(model, pyramid, batch, queries, capacity):
    head = model.seg_head
    inputs, rois, labels = gather_train_rois(queries, batch, capacity)
    coarse = head(pyramid, batch.image_sizes, inputs.queries, inputs.boxes)
    b, r = labels.shape
    mask = pick_class(coarse, labels)
    out = {}
    for _ in range(head.subdivision_steps):  # the head's own refine(), keeping the refined cells
        mask = upsample2x(mask)
        size = mask.shape[-1]
        index, points = subdivision_points(mask.reshape(b * r, size, size), head.subdivision_points)
        values = head.point_logits(pyramid, batch.image_sizes, inputs.boxes, coarse, points.reshape(b, r, -1, 2),
                                   labels)
        mask = overwrite_points(mask.reshape(b * r, size, size), index, values.reshape(b * r, -1)).reshape(
            b, r, size, size)
        refined = jnp.zeros((b * r, size * size), bool).at[jnp.arange(b * r)[:, None], index].set(True)
        if size in GRIDS:
            out[size] = (mask, refined.reshape(b, r, size, size))
    return out, inputs.boxes, rois.gt_index, inputs.valid


def measure(config, workdir: str, step: int | None = None, max_batches: int | None = None) -> dict:
    info = data_setup.eval_dataset_info(config.data, workdir)
    graphdef, params, rest, step = restore_for_inference(config, workdir, info.classes.num_classes, step)
    name = config.model.seg_head.name
    grids_fn = {"effseg": effseg_grids, "pointrend": pointrend_grids}.get(name)
    if grids_fn is None:
        raise ValueError(f"{name}: only EffSeg and PointRend++ refine chosen cells")
    capacity = config.model.seg_head.max_train_rois

    @jax.jit
    def run(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        pyramid = model.pyramid(batch)
        _, _, queries = model.head.losses_with_queries(pyramid, batch)
        grids, boxes, gt_index, valid = grids_fn(model, pyramid, batch, queries, capacity)
        num_stages = int(np.log2(max(GRIDS) / 14))
        targets = mask_targets(jnp.asarray(batch.masks), boxes, gt_index, num_stages, 14, "centre",
                               image_sizes=jnp.asarray(batch.image_sizes, jnp.int32))
        return {size: grid_counts(*grids[size], *targets[int(np.log2(size / 14))], valid) for size in grids}

    mesh = sharding_lib.make_mesh()
    totals = {size: dict.fromkeys(COUNTS, 0) for size in GRIDS}
    for i, local in enumerate(data_setup.build_eval_iterator(info, shard_index=0, shard_count=1)):
        if max_batches is not None and i >= max_batches:
            break
        counts = jax.device_get(run(params, rest, sharding_lib.shard_batch(local, mesh)))
        for size, c in counts.items():
            for k in COUNTS:
                totals[size][k] += int(c[k])
    result = {"workdir": workdir, "step": step, "head": name}
    for size, t in totals.items():
        unrefined = t["outline"] - t["refined_outline"]
        result[str(size)] = dict(
            t, coverage=t["refined_outline"] / max(t["outline"], 1), on_outline=t["refined_outline"] / max(t["refined"], 1),
            acc_refined=t["correct_refined"] / max(t["refined_outline"], 1),
            acc_unrefined=t["correct_unrefined"] / max(unrefined, 1),
            acc_outline=(t["correct_refined"] + t["correct_unrefined"]) / max(t["outline"], 1))
    return result


def table(results: dict) -> str:
    lines = ["| head | grid | outline cells | refined cells | coverage | refined on the outline | "
             "acc. refined | acc. unrefined | acc. all outline |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for size in GRIDS:
            g = r[str(size)]
            lines.append(f"| {name} | {size}² | {g['outline']} | {g['refined']} | {g['coverage']:.3f} | "
                         f"{g['on_outline']:.3f} | {g['acc_refined']:.3f} | {g['acc_unrefined']:.3f} | "
                         f"{g['acc_outline']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    overrides, rest_args = config_lib.split_config_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=CONFIG:WORKDIR")
    parser.add_argument("--json", default="")
    parser.add_argument("--max-batches", type=int, default=None, help="a quick look: the first batches only")
    args = parser.parse_args(rest_args)
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for spec in args.runs:
        name, sep, rest = spec.partition("=")
        config_path, sep2, workdir = rest.rpartition(":")
        if not (sep and sep2 and name):
            parser.error(f"a run is NAME=CONFIG:WORKDIR, got {spec!r}")
        config = config_sections.load_config(config_path, overrides)
        results[name] = measure(config, workdir, find_checkpoint_step(workdir, None), args.max_batches)
        print(table({name: results[name]}), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
