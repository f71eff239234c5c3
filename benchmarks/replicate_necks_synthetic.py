"""Small-scale replication of thesis table 3.1 on the synthetic dataset.

Trains the quickstart detector (narrow ResNet-18 with GroupNorm, RetinaNet C = 1)
with different necks — FPN, TPN(2,2), TPN(1,4), TPN(4,1), BiFPN — for the same
number of steps, same seed and same data, then evaluates each on the synthetic
validation split. The pyramid is 64 channels wide (bottleneck hidden size 16,
the thesis's 4:1 ratio), so the TPN variants have similar cost (L·B = 4); the
inference MACs of each model on one 224×288 image are reported beside the AP.

    python benchmarks/replicate_necks_synthetic.py --steps 600 --out runs/necks_synthetic

Writes ``OUT/<neck>/`` work directories and prints a Markdown table; a finished
run is not retrained (its metrics are read back), so the script can be resumed.
"""

from __future__ import annotations

import argparse
import json
import os

import ml_collections

from msvision.analysis.cost import abstract_model, compile_cost, count_parameters, make_predict_fn, synthetic_batch
from msvision.config_sections import load_config
from msvision.models.build import module_config

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

NECKS = {
    "fpn": dict(name="fpn"),
    "tpn_L2B2": dict(name="tpn", num_layers=2, num_bottlenecks=2),
    "tpn_L1B4": dict(name="tpn", num_layers=1, num_bottlenecks=4),
    "tpn_L4B1": dict(name="tpn", num_layers=4, num_bottlenecks=1),
    "bifpn_L4": dict(name="bifpn", num_layers=4),
}


def neck_config(base: ml_collections.ConfigDict, spec: dict) -> ml_collections.ConfigDict:
    if spec["name"] == "fpn":
        return ml_collections.ConfigDict(dict(base.model.neck))
    neck = module_config("neck", spec["name"])
    neck.update({k: v for k, v in spec.items() if k != "name"})
    neck.channels = base.model.neck.channels
    neck.out_levels = tuple(base.model.neck.out_levels)
    if "hidden_channels" in neck:
        neck.hidden_channels = base.model.neck.channels // 4
    return neck


def inference_macs(model_cfg: ml_collections.ConfigDict) -> tuple[float, int]:
    import jax
    from flax import nnx

    model = abstract_model(model_cfg)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = synthetic_batch(1, 256, 5, model_cfg.num_classes)
    abstract = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)  # noqa: E731
    _, cost = compile_cost(make_predict_fn(graphdef), abstract(params), abstract(rest), abstract(batch))
    return cost["macs"], count_parameters(model)["trainable"]


def train_or_read(config, workdir: str, metrics_file: str) -> dict:
    """The final ``eval/...`` metrics of a run: read back when ``metrics_file`` exists
    (a finished run is not retrained), else from training it now."""
    if os.path.exists(metrics_file):
        with open(metrics_file) as f:
            return {f"eval/{k}": v for k, v in json.load(f).items()}
    from msvision.train import loop  # imported on use: reading results back needs no JAX set-up

    return loop.train(config, workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default="runs/necks_synthetic")
    parser.add_argument("--necks", nargs="*", default=list(NECKS))
    args = parser.parse_args()
    rows = []
    for name in args.necks:
        config = load_config(os.path.join(ROOT, "configs/quickstart.py"))
        config.model.neck = neck_config(config, NECKS[name])
        config.model.num_classes = 6
        config.train.num_steps = args.steps
        config.train.checkpoint_every = 0
        config.eval.visualize = 0
        workdir = os.path.join(args.out, name)
        metrics_file = os.path.join(workdir, "eval", f"metrics_{args.steps}.json")
        metrics = train_or_read(config, workdir, metrics_file)
        macs, params = inference_macs(config.model)
        rows.append((name, params, macs, metrics["eval/bbox/AP"], metrics["eval/bbox/AP50"]))
        print(f"{name}: params {params}, GMACs {macs / 1e9:.2f}, AP {metrics['eval/bbox/AP']:.3f}", flush=True)
    print(f"\nsteps: {args.steps}, seed 0, quickstart data and schedule (decays at 9/12 and 11/12 of the run)\n")
    print("| neck | trainable params | inference GMACs (1×256²) | AP | AP50 |")
    print("| --- | --- | --- | --- | --- |")
    for name, params, macs, ap, ap50 in rows:
        print(f"| {name} | {params / 1e6:.3f} M | {macs / 1e9:.2f} | {ap:.3f} | {ap50:.3f} |")


if __name__ == "__main__":
    main()
