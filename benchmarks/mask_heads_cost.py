"""Params and MACs of the chapter 5 mask heads alone and of the full FQDetV2 models (thesis tables 5.3, 5.4).

Heads alone (table 5.4: FQDetV2, 300 queries, first 100 COCO val images, i.e. 100 detections
per image): trainable parameters from abstract shapes at full size (C = 256, 80 classes),
the analytic MACs over ``--dets`` real RoIs (``msvision.models.heads.{effseg,mask_baselines}.cost``,
the thesis's fvcore counting), and, unless ``--no-compile``, XLA's MACs
(``cost_analysis()['flops'] / 2``, every slot counted) of the jitted head inference
(forward + class-specific mask selection + subdivision) on one ``--image-size`` image with
``--rois`` RoIs. Full models (``--models``): trainable parameters by part and, with
``--compile-models``, XLA's MACs of the whole jitted ``Detector.predict`` on one
``--image-size`` image (``msvision.analysis.cost.compile_cost``; heavy at 800 px). With
``--repeats N`` the compiled head inference is also run N times (median CPU latency, in
the same process, so the ratios are what counts) and XLA's planned temporaries are listed.

    python benchmarks/mask_heads_cost.py                                  # small demo input
    python benchmarks/mask_heads_cost.py --image-size 800 --rois 100 --compile-models   # the thesis input
    python benchmarks/mask_heads_cost.py --image-size 800 --rois 100 --repeats 3 --models ""   # + latency

Ratios are against Mask R-CNN++ in the same process and against the thesis.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msvision.analysis.cost import abstract_model, compile_cost, count_parameters, make_predict_fn, synthetic_batch
from msvision.config import load_config
from msvision.models.abstract import abstract_init, cheap_tracer_errors
from msvision.models.heads.effseg import EffSegHead
from msvision.models.heads.effseg.cost import effseg_macs
from msvision.models.heads.mask_baselines import MaskRCNNHead, PointRendHead
from msvision.models.heads.mask_baselines.cost import maskrcnn_macs, pointrend_macs
from msvision.models.heads.refinemask import RefineMaskHead
from msvision.models.heads.refinemask.cost import refinemask_macs
from msvision.models.layers import count_variables
from msvision.structures import Batch, Detections, QueryOutputs

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "effseg"
# Table 5.4 (heads alone) and table 5.3 (FQDetV2, 300 queries, 12 epochs): params, GFLOPs (= GMACs).
THESIS_HEAD = {"maskrcnn": (2.9e6, 57.0e9), "pointrend": (3.2e6, 126.7e9), "refinemask": (6.6e6, 285.6e9),
               "effseg": (4.2e6, 85.3e9)}
THESIS_MODEL = {"maskrcnn": (40.5e6, 223.3e9), "pointrend": (40.8e6, 292.7e9), "refinemask": (44.2e6, 451.6e9),
                "effseg": (41.8e6, 251.8e9)}
# row -> (constructor, keyword arguments); PointRend++ at 112² (2 subdivision steps, the thesis's
# T1439, our default) and 224² (3 steps, the released config).
HEADS = {
    "maskrcnn": (MaskRCNNHead, {}),
    "pointrend-112": (PointRendHead, {"subdivision_steps": 2}),
    "pointrend-224": (PointRendHead, {"subdivision_steps": 3}),
    "refinemask": (RefineMaskHead, {}),
    "effseg": (EffSegHead, {"sfm_impl": "xla"}),
}


def analytic_macs(row: str, dets: int, image: int) -> int:
    if row == "maskrcnn":
        return maskrcnn_macs(num_rois=dets)["total"]
    if row.startswith("pointrend"):
        return pointrend_macs(num_rois=dets, subdivision_steps=3 if "224" in row else 2)["total"]
    if row == "refinemask":  # its semantic branch on P2 of the image
        return refinemask_macs(256, dets, (-(-image // 4)) ** 2)["total"]
    # EffSeg with K = 10,000 refined cells per stage, all valid (R·196 ≥ K): an upper bound.
    k = min(10_000, dets * 196)
    return effseg_macs(256, dets, [dets * 196, 4 * k, 4 * k, 4 * k])["total"]


def head_inputs(image: int, rois: int, seed: int = 0):
    """One image: a P2–P7 pyramid of width 256, ``rois`` queries with log-uniform boxes (16–600 px,
    clipped to the image), one detection per query with a random class."""
    rng = np.random.default_rng(seed)
    pyramid = {l: jnp.asarray(rng.standard_normal((1, -(-image // 2 ** l), -(-image // 2 ** l), 256)), jnp.float32)
               for l in range(2, 8)}
    size = np.minimum(np.exp(rng.uniform(np.log(16), np.log(600), (1, rois, 2))), image - 1)
    xy = rng.uniform(0, image - size)
    boxes = jnp.asarray(np.concatenate([xy, xy + size], -1), jnp.float32)
    queries = QueryOutputs(queries=jnp.asarray(rng.standard_normal((1, rois, 256)), jnp.float32), boxes=boxes,
                           detection_queries=jnp.arange(rois, dtype=jnp.int32)[None])
    dets = Detections(boxes=boxes, scores=jnp.linspace(1.0, 0.1, rois)[None],
                      labels=jnp.asarray(rng.integers(0, 80, (1, rois)), jnp.int32), valid=jnp.ones((1, rois), bool))
    batch = Batch(images=np.zeros((1, image, image, 3), np.uint8), image_sizes=np.array([[image, image]], np.int32),
                  orig_sizes=np.array([[image, image]], np.int32), image_ids=np.zeros(1, np.int32),
                  boxes=np.zeros((1, 1, 4), np.float32), labels=np.zeros((1, 1), np.int32),
                  valid=np.zeros((1, 1), bool), is_crowd=np.zeros((1, 1), bool))
    return pyramid, batch, dets, queries


def head_row(row: str, args) -> dict:
    cls, kw = HEADS[row]
    make = lambda: cls(levels=(2, 3, 4, 5, 6, 7), rngs=nnx.Rngs(0), **kw)  # noqa: E731
    if cls is not EffSegHead:
        make = lambda: cls(num_classes=80, levels=(2, 3, 4, 5, 6, 7), rngs=nnx.Rngs(0), **kw)  # noqa: E731
    graphdef, state = nnx.split(abstract_init(make))
    out = dict(row=row, params=count_variables(nnx.merge(graphdef, state), nnx.Param),
               analytic=analytic_macs(row, args.dets, args.image_size))
    if not args.no_compile:
        pyramid, batch, dets, queries = head_inputs(args.image_size, args.rois)
        abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)  # noqa
        fn = lambda st, p, b, d, q: nnx.merge(graphdef, st).predict(p, b, d, q)  # noqa: E731
        _, info = compile_cost(fn, state, *(abstract(x) for x in (pyramid, batch, dets, queries)))
        out.update(xla=info["macs"], compile_s=info["compile_s"], temp=info["temp_size"])
        if args.repeats:  # timed: the function training and inference run (compile_cost unrolls scans)
            compiled = jax.jit(lambda *a: fn(*a))
            with cheap_tracer_errors():  # real weights (random init) for the timed runs
                state = jax.jit(lambda: nnx.split(make())[1])()
            jax.block_until_ready(compiled(state, pyramid, batch, dets, queries))  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(state, pyramid, batch, dets, queries))
                times.append(time.perf_counter() - t0)
            out["latency_s"] = float(np.median(times))
    return out


def model_row(name: str, args) -> dict:
    config = load_config(str(CONFIGS / f"r50_fpn_fqdetv2_{name}.py"))
    model = abstract_model(config.model)
    params = count_parameters(model)
    out = dict(row=name, params=params["trainable"], by_part=params["trainable_by_part"])
    if args.compile_models:
        graphdef, p, rest = nnx.split(model, nnx.Param, ...)
        batch = synthetic_batch(1, args.image_size, 10, config.model.num_classes, with_masks=False)
        abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)  # noqa
        _, info = compile_cost(make_predict_fn(graphdef), p, rest, abstract(batch))
        out.update(xla=info["macs"], compile_s=info["compile_s"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--rois", type=int, default=10, help="RoIs (= detections) of the compiled head input")
    parser.add_argument("--dets", type=int, default=100, help="detections per image of the analytic count")
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--models", default="maskrcnn,pointrend,refinemask,effseg")
    parser.add_argument("--no-compile", action="store_true", help="heads: params and analytic MACs only")
    parser.add_argument("--compile-models", action="store_true", help="full models: XLA MACs of predict")
    parser.add_argument("--repeats", type=int, default=0, help="heads: time the compiled inference N times")
    args = parser.parse_args()
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, jax {jax.__version__}, "
          f"{os.cpu_count()} CPUs, backend {jax.default_backend()}")
    print(f"## heads alone: analytic MACs at {args.dets} detections; XLA MACs of the head's predict on one "
          f"{args.image_size}² image with {args.rois} RoIs")
    print("| head | params | vs thesis | analytic GMACs | vs thesis | vs Mask R-CNN++ | XLA GMACs | compile s "
          "| temporaries MiB | CPU ms | vs Mask R-CNN++ |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    reference_ms = None
    reference = None
    for row in [r.strip() for r in args.heads.split(",") if r.strip()]:
        r = head_row(row, args)
        thesis = THESIS_HEAD[row.split("-")[0]]
        reference = reference or (r["analytic"] if row == "maskrcnn" else None)
        rel = f"{r['analytic'] / reference:.2f}×" if reference else "n/a"
        xla = f"{r['xla'] / 1e9:.3f}" if "xla" in r else "—"
        comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "—"
        temp = f"{r['temp'] / 2 ** 20:.0f}" if r.get("temp") is not None else "—"
        reference_ms = reference_ms or (r.get("latency_s") if row == "maskrcnn" else None)
        ms = f"{1e3 * r['latency_s']:.0f}" if "latency_s" in r else "—"
        rel_ms = f"{r['latency_s'] / reference_ms:.2f}×" if "latency_s" in r and reference_ms else "—"
        print(f"| {row} | {r['params']:,} | {r['params'] / thesis[0] - 1:+.1%} | {r['analytic'] / 1e9:.2f} | "
              f"{r['analytic'] / thesis[1] - 1:+.1%} | {rel} | {xla} | {comp} | {temp} | {ms} | {rel_ms} |",
              flush=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if models:
        suffix = f"; XLA MACs of predict on one {args.image_size}² image" if args.compile_models else ""
        print(f"\n## full FQDetV2 models (300 queries){suffix}")
        print("| model | params | vs thesis | seg head | XLA GMACs | compile s |")
        print("|---|---|---|---|---|---|")
        for name in models:
            r = model_row(name, args)
            thesis = THESIS_MODEL[name]
            xla = f"{r['xla'] / 1e9:.2f}" if "xla" in r else "—"
            comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "—"
            print(f"| {name} | {r['params']:,} | {r['params'] / thesis[0] - 1:+.2%} | {r['by_part']['seg_head']:,} | "
                  f"{xla} | {comp} |", flush=True)


if __name__ == "__main__":
    main()
