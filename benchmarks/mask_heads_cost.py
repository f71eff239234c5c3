"""Params and MACs of the chapter 5 mask heads alone and of the full FQDetV2 models (thesis tables 5.3, 5.4).

Heads alone (table 5.4: FQDetV2, 300 queries, first 100 COCO val images, i.e. 100 detections
per image): trainable parameters from abstract shapes at full size (C = 256, 80 classes),
the analytic MACs over ``--dets`` real RoIs (``msvision.models.heads.{effseg,mask_baselines}.cost``,
the thesis's fvcore counting), and, unless ``--no-compile``, XLA's MACs
(``cost_analysis()['flops'] / 2``, every slot counted) of the jitted head inference
(forward + class-specific mask selection + subdivision) on one ``--image-size`` image with
``--rois`` RoIs. Full models (``--models``): trainable parameters by part and, with
``--compile-models``, XLA's MACs of the whole jitted ``Detector.predict`` on one
``--image-size`` image (``msvision.analysis.cost.compile_cost``, every IdConv tap counted;
the image unpadded, batch size 1). With ``--repeats N`` the compiled inference of the heads
(and, with ``--compile-models``, of the full models, random weights) is also run N times:
median CPU latency in the same process, so the ratios are what counts; XLA's planned
temporaries are listed. The timed functions are the production ones (the IdConv's taps in
a scan), not the unrolled ones that are counted.

    python benchmarks/mask_heads_cost.py                                  # small demo input
    python benchmarks/mask_heads_cost.py --image-size 800 --rois 100 --repeats 3 --compile-models  # thesis input
    python benchmarks/mask_heads_cost.py --coco-mini 2 --rois 100 --repeats 3 --compile-models     # COCO sizes

``--coco-mini N`` replaces the square image by the first N ``val2017`` images of
``../shared/data/coco_mini`` (``--coco-root``) at their evaluation size (shortest edge 800,
longest at most 1333), one table each: only the image size is taken from them (the pyramid,
boxes and classes stay random), which is what the cost depends on.

Ratios are against Mask R-CNN++ in the same process and against the thesis.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msvision.analysis.cost import abstract_model, compile_cost, count_parameters, make_predict_fn, synthetic_batch
from msvision.config_sections import load_config
from msvision.data.transforms import resized_size
from msvision.models.abstract import abstract_init, cheap_tracer_errors
from msvision.models.build import build_model
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
# §5.4.2, our default) and 224² (3 steps, the released config).
HEADS = {
    "maskrcnn": (MaskRCNNHead, {}),
    "pointrend-112": (PointRendHead, {"subdivision_steps": 2}),
    "pointrend-224": (PointRendHead, {"subdivision_steps": 3}),
    "refinemask": (RefineMaskHead, {}),
    "effseg": (EffSegHead, {"sfm_impl": "xla"}),
}


def analytic_macs(row: str, dets: int, image: tuple[int, int]) -> int:
    if row == "maskrcnn":
        return maskrcnn_macs(num_rois=dets)["total"]
    if row.startswith("pointrend"):
        return pointrend_macs(num_rois=dets, subdivision_steps=3 if "224" in row else 2)["total"]
    if row == "refinemask":  # its semantic branch on P2 of the image
        return refinemask_macs(256, dets, -(-image[0] // 4) * -(-image[1] // 4))["total"]
    # EffSeg with K = 10,000 refined cells per stage, all valid (R·196 ≥ K): an upper bound.
    k = min(10_000, dets * 196)
    return effseg_macs(256, dets, [dets * 196, 4 * k, 4 * k, 4 * k])["total"]


def head_inputs(image: tuple[int, int], rois: int, seed: int = 0):
    """One ``(h, w)`` image: a P2–P7 pyramid of width 256, ``rois`` queries with log-uniform boxes
    (16–600 px, clipped to the image), one detection per query with a random class."""
    rng = np.random.default_rng(seed)
    h, w = image
    pyramid = {l: jnp.asarray(rng.standard_normal((1, -(-h // 2 ** l), -(-w // 2 ** l), 256)), jnp.float32)
               for l in range(2, 8)}
    wh = np.array([w, h], np.float64)
    size = np.minimum(np.exp(rng.uniform(np.log(16), np.log(600), (1, rois, 2))), wh - 1)
    xy = rng.uniform(0, wh - size)
    boxes = jnp.asarray(np.concatenate([xy, xy + size], -1), jnp.float32)
    queries = QueryOutputs(queries=jnp.asarray(rng.standard_normal((1, rois, 256)), jnp.float32), boxes=boxes,
                           detection_queries=jnp.arange(rois, dtype=jnp.int32)[None])
    dets = Detections(boxes=boxes, scores=jnp.linspace(1.0, 0.1, rois)[None],
                      labels=jnp.asarray(rng.integers(0, 80, (1, rois)), jnp.int32), valid=jnp.ones((1, rois), bool))
    batch = Batch(images=np.zeros((1, h, w, 3), np.uint8), image_sizes=np.array([[h, w]], np.int32),
                  orig_sizes=np.array([[h, w]], np.int32), image_ids=np.zeros(1, np.int32),
                  boxes=np.zeros((1, 1, 4), np.float32), labels=np.zeros((1, 1), np.int32),
                  valid=np.zeros((1, 1), bool), is_crowd=np.zeros((1, 1), bool))
    return pyramid, batch, dets, queries


def coco_mini_val_sizes(root: pathlib.Path, count: int) -> list[tuple[str, tuple[int, int]]]:
    """The first ``count`` val2017 images (by file name) at the evaluation resize (800, max 1333)."""
    files = sorted((root / "annotations").glob("*val2017*.json"))
    if not files:
        raise SystemExit(f"--coco-mini: no annotations/*val2017*.json under {root} (set --coco-root)")
    images = sorted(json.loads(files[0].read_text())["images"], key=lambda i: i["file_name"])[:count]
    return [(i["file_name"], resized_size((i["height"], i["width"]), 800, 1333)) for i in images]


def head_row(row: str, args, image: tuple[int, int]) -> dict:
    cls, kw = HEADS[row]
    make = lambda: cls(levels=(2, 3, 4, 5, 6, 7), rngs=nnx.Rngs(0), **kw)  # noqa: E731
    if cls is not EffSegHead:
        make = lambda: cls(num_classes=80, levels=(2, 3, 4, 5, 6, 7), rngs=nnx.Rngs(0), **kw)  # noqa: E731
    graphdef, state = nnx.split(abstract_init(make))
    out = dict(row=row, params=count_variables(nnx.merge(graphdef, state), nnx.Param),
               analytic=analytic_macs(row, args.dets, image))
    if not args.no_compile:
        pyramid, batch, dets, queries = head_inputs(image, args.rois)
        abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)  # noqa
        fn = lambda st, p, b, d, q: nnx.merge(graphdef, st).predict(p, b, d, q)  # noqa: E731
        _, info = compile_cost(fn, state, *(abstract(x) for x in (pyramid, batch, dets, queries)))
        out.update(xla=info["macs"], compile_s=info["compile_s"], temp=info["temp_size"])
        if args.repeats:  # timed: the function training and inference run (compile_cost unrolls scans)
            with cheap_tracer_errors():  # real weights (random init) for the timed runs
                state = jax.jit(lambda: nnx.split(make())[1])()
            # A new function object: jax.jit(fn) would reuse compile_cost's trace (taps unrolled).
            production = jax.jit(lambda *a: fn(*a))
            out["latency_s"] = median_latency(production, (state, pyramid, batch, dets, queries), args.repeats)
    return out


def model_row(name: str, args, image: tuple[int, int]) -> dict:
    config = load_config(str(CONFIGS / f"r50_fpn_fqdetv2_{name}.py"))
    model = abstract_model(config.model)
    params = count_parameters(model)
    out = dict(row=name, params=params["trainable"], by_part=params["trainable_by_part"])
    if args.compile_models:
        graphdef, p, rest = nnx.split(model, nnx.Param, ...)
        # One image, no padding: evaluation at batch size 1 with padding to the batch maximum
        # (the thesis's setting).
        batch = synthetic_batch(1, max(image), 10, config.model.num_classes, with_masks=False)
        batch = batch.replace(images=batch.images[:, :image[0], :image[1]],
                              image_sizes=np.array([image], np.int32), orig_sizes=np.array([image], np.int32),
                              boxes=np.minimum(batch.boxes, min(image)))
        abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)  # noqa
        _, info = compile_cost(make_predict_fn(graphdef), p, rest, abstract(batch))
        out.update(xla=info["macs"], compile_s=info["compile_s"], temp=info["temp_size"])
        if args.repeats:  # timed: the production jit (compile_cost unrolls scans), random weights
            with cheap_tracer_errors():
                p, rest = jax.jit(lambda: nnx.split(build_model(config.model, rngs=nnx.Rngs(0)), nnx.Param, ...)[1:])()
            out["latency_s"] = median_latency(jax.jit(make_predict_fn(graphdef)), (p, rest, jax.device_put(batch)),
                                              args.repeats)
    return out


def median_latency(fn, args: tuple, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` over ``repeats`` runs after one warm-up (compile) run."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _cell(r: dict, key: str, spec: str, scale: float = 1.0) -> str:
    """``r[key]·scale`` formatted with ``spec``, or a dash when it was not measured."""
    return format(r[key] * scale, spec) if r.get(key) is not None else "—"


def _ratio(r: dict, key: str, reference) -> str:
    return f"{r[key] / reference:.2f}×" if r.get(key) is not None and reference else "—"


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
    parser.add_argument("--coco-mini", type=int, default=0,
                        help="the first N coco_mini val2017 images at their evaluation size instead")
    parser.add_argument("--coco-root", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
                                                    / "coco_mini"), help="folder with val2017/ and annotations/")
    args = parser.parse_args()
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, jax {jax.__version__}, "
          f"{os.cpu_count()} CPUs, backend {jax.default_backend()}")
    if args.coco_mini:
        images = coco_mini_val_sizes(pathlib.Path(args.coco_root), args.coco_mini)
    else:
        images = [(f"{args.image_size}²", (args.image_size, args.image_size))]
    rows = [r.strip() for r in args.heads.split(",") if r.strip()]
    for label, image in images:
        print(f"\n## heads alone on {label} (h × w = {image[0]} × {image[1]}): analytic MACs at {args.dets} "
              f"detections; XLA MACs of the head's predict with {args.rois} RoIs")
        print("| head | params | vs thesis | analytic GMACs | vs thesis | vs Mask R-CNN++ | XLA GMACs | compile s "
              "| temporaries MiB | CPU ms | vs Mask R-CNN++ |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        reference_ms = None
        reference = None
        for row in rows:
            r = head_row(row, args, image)
            thesis = THESIS_HEAD[row.split("-")[0]]
            reference = reference or (r["analytic"] if row == "maskrcnn" else None)
            reference_ms = reference_ms or (r.get("latency_s") if row == "maskrcnn" else None)
            print(f"| {row} | {r['params']:,} | {r['params'] / thesis[0] - 1:+.1%} | {r['analytic'] / 1e9:.2f} | "
                  f"{r['analytic'] / thesis[1] - 1:+.1%} | {_ratio(r, 'analytic', reference)} | "
                  f"{_cell(r, 'xla', '.3f', 1e-9)} | {_cell(r, 'compile_s', '.1f')} | "
                  f"{_cell(r, 'temp', '.0f', 2 ** -20)} | {_cell(r, 'latency_s', '.0f', 1e3)} | "
                  f"{_ratio(r, 'latency_s', reference_ms)} |", flush=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for label, image in images if models else []:
        suffix = f"; XLA MACs of predict on {label} ({image[0]} × {image[1]})" if args.compile_models else ""
        print(f"\n## full FQDetV2 models (300 queries){suffix}")
        print("| model | params | vs thesis | seg head | XLA GMACs | vs thesis | vs Mask R-CNN++ | compile s "
              "| temporaries MiB | CPU s | vs Mask R-CNN++ |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        reference = reference_s = None
        for name in models:
            r = model_row(name, args, image)
            thesis = THESIS_MODEL[name]
            reference = reference or (r.get("xla") if name == "maskrcnn" else None)
            reference_s = reference_s or (r.get("latency_s") if name == "maskrcnn" else None)
            print(f"| {name} | {r['params']:,} | {r['params'] / thesis[0] - 1:+.2%} | {r['by_part']['seg_head']:,} | "
                  f"{_cell(r, 'xla', '.2f', 1e-9)} | {_ratio(r, 'xla', thesis[1])} | {_ratio(r, 'xla', reference)} | "
                  f"{_cell(r, 'compile_s', '.1f')} | {_cell(r, 'temp', '.0f', 2 ** -20)} | "
                  f"{_cell(r, 'latency_s', '.2f')} | {_ratio(r, 'latency_s', reference_s)} |", flush=True)
        if not args.compile_models:
            break  # parameters do not depend on the image


if __name__ == "__main__":
    main()
