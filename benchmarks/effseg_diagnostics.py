"""What each EffSeg refinement stage adds, at one checkpoint (thesis 5.3.3's stages 0–3).

Three measurements on the validation split of a trained EffSeg run:

1. **Truncation**: mask AP (and Boundary AP) with the masks assembled from stages 0..n
   only, n = 0..3 (``model.seg_head.inference_stages``): the later stages' cells are not
   written, the logits are upsampled ×2 per skipped stage, so every row pastes a 112² grid.
   A stage that helps raises the row below it.
2. **Per-stage accuracy on the refined cells**: the detector's positive queries on the
   validation images as RoIs (the training RoIs, ``select_train_rois``), and for every
   stage s ≥ 1 the cells it refined: the accuracy of the stage's own segmentation logits
   against the ground truth at the cell centres (the thesis's targets), beside the
   accuracy of what the mask would hold without the stage (the upsampled logits of
   stages 0..s−1 at the same cells). Own < upsampled means the stage overwrites good
   predictions with worse ones. Also the share of refined cells that are boundary cells
   (refinement target: the cell holds foreground and background).
3. **Budget**: mask AP against the refined cells per RoI and stage at inference
   (``selected_per_roi`` = ρ; the head's training budget is one of them).

    python benchmarks/effseg_diagnostics.py --config=configs/effseg/large_effseg.py \\
        --workdir=runs/large/effseg [--budgets 25,50,100,200,400] [--json out.json]

Evaluation outputs go to ``WORKDIR/diagnostics/<variant>/eval/`` (the run's own
``eval/`` is not touched). Each variant compiles its own inference function.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from msvision import config as config_lib  # noqa: E402
from msvision import config_sections  # noqa: E402
from msvision.checkpoint import find_checkpoint_step  # noqa: E402
from msvision.inference.restore import restore_for_inference  # noqa: E402
from msvision.models.build import build_model  # noqa: E402
from msvision.models.heads.effseg.criterion import gather_cells  # noqa: E402
from msvision.models.heads.effseg.postprocess import assemble_mask_logits  # noqa: E402
from msvision.models.heads.roi_mask.postprocess import upsample2x  # noqa: E402
from msvision.models.heads.roi_mask.rois import select_train_rois  # noqa: E402
from msvision.models.heads.roi_mask.targets import mask_targets  # noqa: E402
from msvision.train import data_setup  # noqa: E402
from msvision.train import sharding as sharding_lib  # noqa: E402
from msvision.train.evaluate import evaluate_detector  # noqa: E402

KEYS = (("segm/AP", "mask AP"), ("segm/AP50", "AP50"), ("segm/AP75", "AP75"), ("segm/APl", "AP_L"),
        ("boundary/AP", "Boundary AP"), ("bbox/AP", "box AP"))


def variant_graphdef(config, **seg_overrides):
    """The graph of ``config.model`` with ``model.seg_head`` fields overridden (same parameters)."""
    model_cfg = config.model.copy_and_resolve_references()
    with model_cfg.unlocked():
        model_cfg.backbone.pretrained = ""
        for key, value in seg_overrides.items():
            with model_cfg.seg_head.ignore_type():  # e.g. an int budget given per stage
                model_cfg.seg_head[key] = value
    abstract = nnx.eval_shape(lambda: build_model(model_cfg, rngs=nnx.Rngs(0)))
    return nnx.split(abstract, nnx.Param, ...)[0]


def evaluate_variant(config, info, graphdef, params, rest, out_dir: str, step: int) -> dict:
    mesh = sharding_lib.make_mesh()
    predict = jax.jit(lambda p, r, b: nnx.merge(graphdef, p, r).predict(b))
    start = time.perf_counter()
    metrics = evaluate_detector(config, info, lambda batch: predict(params, rest, batch), mesh, out_dir, step)
    metrics = {k[len("eval/"):]: v for k, v in metrics.items()}
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def stage_accuracy(config, info, graphdef, params, rest, max_batches: int | None = None) -> list[dict]:
    """Per stage s ≥ 1, over the refined (valid active) cells of the validation images' positive
    queries: ``own_acc``, ``upsampled_acc``, ``boundary_share``, ``cells``."""
    num_stages = config.model.seg_head.num_stages
    capacity = config.model.seg_head.max_train_rois

    @jax.jit
    def run(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        head = model.seg_head
        pyramid = model.pyramid(batch)
        _, _, queries = model.head.losses_with_queries(pyramid, batch)
        rois = select_train_rois(queries, capacity)
        take = lambda x: jnp.take_along_axis(x, rois.query_index[..., None], axis=1)  # noqa: E731
        boxes = take(queries.boxes).astype(jnp.float32)
        stages = head(pyramid, batch.image_sizes, take(queries.queries), boxes, rois.valid)
        targets = mask_targets(jnp.asarray(batch.masks), boxes, rois.gt_index, head.num_stages,
                               head.roi_resolution, head.criterion.seg_target,
                               image_sizes=jnp.asarray(batch.image_sizes, jnp.int32))
        out = []
        for s in range(1, num_stages + 1):
            cells = stages[s]
            seg_t = gather_cells(targets[s][0], cells["roi"], cells["xy"])
            ref_t = gather_cells(targets[s - 1][1], cells["roi"], cells["xy"] // 2)  # the parent's target
            before = upsample2x(assemble_mask_logits(stages[:s], capacity, head.roi_resolution))
            up = gather_cells(before, cells["roi"], cells["xy"])
            valid = cells["valid"]
            out.append(dict(own=jnp.sum(valid & ((cells["seg"] > 0) == seg_t)),
                            up=jnp.sum(valid & ((up > 0) == seg_t)),
                            boundary=jnp.sum(valid & ref_t), cells=jnp.sum(valid)))
        return out

    totals = [dict(own=0, up=0, boundary=0, cells=0) for _ in range(num_stages)]
    mesh = sharding_lib.make_mesh()
    for i, local in enumerate(data_setup.build_eval_iterator(info, shard_index=0, shard_count=1)):
        if max_batches is not None and i >= max_batches:
            break
        counts = jax.device_get(run(params, rest, sharding_lib.shard_batch(local, mesh)))
        for total, count in zip(totals, counts):
            for k in total:
                total[k] += int(count[k])
    return [dict(stage=s + 1, cells=t["cells"], own_acc=t["own"] / max(t["cells"], 1),
                 upsampled_acc=t["up"] / max(t["cells"], 1), boundary_share=t["boundary"] / max(t["cells"], 1))
            for s, t in enumerate(totals)]


def table(rows: list[tuple[str, dict]], keys=KEYS) -> str:
    lines = ["| variant | " + " | ".join(t for _, t in keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" if k in m else "–" for k, _ in keys) + " |")
    return "\n".join(lines)


def run_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments naming one trained run: ``--config``, ``--workdir``, ``--step``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int, default=None, help="the checkpoint (default: the newest)")
    return parser


def main(argv=None) -> int:
    overrides, rest_args = config_lib.split_config_args(sys.argv[1:] if argv is None else argv)
    parser = run_parser(__doc__)
    parser.add_argument("--budgets", default="25,50,100,200,400", help="refined cells per RoI and stage")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: truncation,accuracy,budget")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(rest_args)
    logging.basicConfig(level=logging.WARNING)
    config = config_sections.load_config(args.config, overrides)
    if config.model.seg_head.name != "effseg":
        parser.error("the config's model.seg_head is not EffSeg")
    skip = set(filter(None, args.skip.split(",")))
    step = find_checkpoint_step(args.workdir, args.step)
    info = data_setup.eval_dataset_info(config.data, args.workdir)
    _, params, rest, step = restore_for_inference(config, args.workdir, info.classes.num_classes, step)
    seg = config.model.seg_head
    report: dict = dict(config=args.config, workdir=args.workdir, step=step,
                        trained_selected_per_roi=seg.selected_per_roi, max_selected=seg.max_selected)
    base = os.path.join(args.workdir, "diagnostics")
    full = None  # the metrics of the unchanged head (all stages, the trained budget), evaluated once

    def save():  # after every part: a finished part survives an interruption
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)

    if "truncation" not in skip:
        rows = []
        for n in range(seg.num_stages + 1):
            graphdef = variant_graphdef(config, inference_stages=n)
            metrics = evaluate_variant(config, info, graphdef, params, rest, os.path.join(base, f"stages_{n}"), step)
            rows.append((f"stages 0–{n}" if n else "stage 0", metrics))
            print(table(rows[-1:]), flush=True)
        full = rows[-1][1]
        report["truncation"] = {name: m for name, m in rows}
        save()
        print("\nTruncation (masks from stages 0..n, upsampled to 112²):\n" + table(rows), flush=True)

    if "accuracy" not in skip:
        graphdef = variant_graphdef(config)
        accuracy = stage_accuracy(config, info, graphdef, params, rest)
        report["stage_accuracy"] = accuracy
        lines = ["| stage | refined cells | own logits acc. | upsampled coarser acc. | boundary share |",
                 "|---|---|---|---|---|"]
        lines += [f"| {a['stage']} | {a['cells']} | {a['own_acc']:.3f} | {a['upsampled_acc']:.3f} | "
                  f"{a['boundary_share']:.3f} |" for a in accuracy]
        save()
        print("\nPer-stage accuracy on the refined cells (validation images, positive queries):\n"
              + "\n".join(lines), flush=True)

    if "budget" not in skip:
        rows = []
        for rho in [int(b) for b in args.budgets.split(",") if b]:
            if rho == seg.selected_per_roi and full is not None:
                metrics = full  # the truncation's last row: the same head
            else:
                graphdef = variant_graphdef(config, selected_per_roi=rho, max_selected=rho * 100)
                metrics = evaluate_variant(config, info, graphdef, params, rest, os.path.join(base, f"rho_{rho}"),
                                           step)
            rows.append((f"ρ = {rho}" + (" (trained)" if rho == seg.selected_per_roi else ""), metrics))
            print(table(rows[-1:]), flush=True)
        report["budget"] = {name: m for name, m in rows}
        print("\nRefined cells per RoI and stage at inference:\n" + table(rows), flush=True)
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
