"""Why does BiFPN train worse than FPN/TPN in the synthetic neck replication?

Controlled runs on the setting of ``benchmarks/replicate_necks_synthetic.py``: the
quickstart detector (narrow GroupNorm ResNet-18 from scratch, RetinaNet C = 1,
64-wide pyramid), same seed, data and schedule shape (learning-rate drops at 9/12
and 11/12 of the run), one variant changed at a time:

* ``bifpn_L4_old``: the earlier BiFPN input stage of msvision (P6 after a ReLU, P7 =
  conv(ReLU(P6)), c2_xavier init of the input projections);
* ``bifpn_L4``: the author's input stage (DetSeg ``deprecated/bifpn.py``,
  ``BiFPN.in_projs``; the current defaults: raw P6, P7 = conv(ReLU(GN(P6))), PyTorch
  default init);
* learning-rate, depth, weight-decay and schedule-length variants of it;
* FPN and TPN(2,2) for reference.

    python benchmarks/bifpn_ablation_synthetic.py --steps 300 --out runs/bifpn_ablation \\
        --variants fpn tpn_L2B2 bifpn_L4_old bifpn_L4 bifpn_L4_lr3e-4

Writes ``OUT/<variant>_<steps>/`` work directories (a finished run is read back,
not retrained) and prints a Markdown table with AP, the last logged training loss
and, for BiFPN, the mean normalised fusion weights of the trained model per node
kind (the weight on the layer input P_l first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replicate_necks_synthetic import NECKS, neck_config, train_or_read  # noqa: E402

from msvision.config_sections import load_config  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

OLD_INPUT = dict(p6_relu=True, p7_norm=False, input_init="c2_xavier")

# variant: (neck of replicate_necks_synthetic.NECKS, neck overrides, optim overrides)
VARIANTS = {
    "fpn": ("fpn", {}, {}),
    "tpn_L2B2": ("tpn_L2B2", {}, {}),
    "bifpn_L4_old": ("bifpn_L4", OLD_INPUT, {}),
    "bifpn_L4": ("bifpn_L4", {}, {}),
    "bifpn_L4_old_lr3e-4": ("bifpn_L4", OLD_INPUT, dict(lr=3e-4, backbone_lr=3e-4)),
    "bifpn_L4_lr3e-4": ("bifpn_L4", {}, dict(lr=3e-4, backbone_lr=3e-4)),
    "bifpn_L4_lr3e-3": ("bifpn_L4", {}, dict(lr=3e-3, backbone_lr=3e-3)),
    "bifpn_L4_wd0": ("bifpn_L4", {}, dict(weight_decay=0.0)),
    "bifpn_L2": ("bifpn_L4", dict(num_layers=2), {}),
    "bifpn_L1": ("bifpn_L4", dict(num_layers=1), {}),
    "bifpn_L8": ("bifpn_L4", dict(num_layers=8), {}),
    "bifpn_L1_dense": ("bifpn_L4", dict(num_layers=1, separable_conv=False), {}),
    "bifpn_L4_dense": ("bifpn_L4", dict(separable_conv=False), {}),
}


def variant_config(name: str, steps: int) -> ml_collections.ConfigDict:
    neck, neck_overrides, optim_overrides = VARIANTS[name]
    config = load_config(os.path.join(ROOT, "configs/quickstart.py"))
    config.model.neck = neck_config(config, NECKS[neck])
    config.model.neck.update(neck_overrides)
    config.optim.update(optim_overrides)
    config.model.num_classes = 6
    config.train.num_steps = steps
    config.train.checkpoint_every = 0
    config.eval.visualize = 0
    return config


def fusion_weights(workdir: str, steps: int) -> str:
    """Mean normalised fusion weights ``(top-down [in, up]; bottom-up [in, td, down])`` of the trained model."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.path.join(workdir, "checkpoints", str(steps), "state"))
    if not os.path.isdir(path):
        return "–"
    params = ocp.StandardCheckpointer().restore(path)["params"]["neck"]["layers"]

    def norm(raw):
        w = np.maximum(np.asarray(raw), 0.0)
        return w / (w.sum(-1, keepdims=True) + 1e-4)

    layers = [params[k] for k in sorted(params, key=int)]
    td = np.mean([norm(l["top_down_weights"]["value"]) for l in layers], axis=(0, 1))
    bu = np.mean([norm(l["bottom_up_weights"]["value"]) for l in layers], axis=(0, 1))
    raw = np.concatenate([np.ravel(l[k]["value"]) for l in layers for k in ("top_down_weights", "bottom_up_weights")])
    return (f"td {'/'.join(f'{v:.2f}' for v in td)}; bu {'/'.join(f'{v:.2f}' for v in bu)}; "
            f"raw {raw.min():.2f}…{raw.max():.2f}")


def last_loss(workdir: str) -> float:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"train/loss"' in line]
    return float(np.mean([r["train/loss"] for r in rows[-3:]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="runs/bifpn_ablation")
    parser.add_argument("--variants", nargs="*", default=["fpn", "tpn_L2B2", "bifpn_L4_old", "bifpn_L4"],
                        choices=list(VARIANTS))
    args = parser.parse_args()
    rows = []
    for name in args.variants:
        config = variant_config(name, args.steps)
        workdir = os.path.join(args.out, f"{name}_{args.steps}")
        metrics_file = os.path.join(workdir, "eval", f"metrics_{args.steps}.json")
        metrics = train_or_read(config, workdir, metrics_file)
        fusion = fusion_weights(workdir, args.steps) if name.startswith("bifpn") else ""
        rows.append((name, metrics["eval/bbox/AP"], metrics["eval/bbox/AP50"], last_loss(workdir), fusion))
        print(f"{name}: AP {metrics['eval/bbox/AP']:.3f} loss {rows[-1][3]:.3f} {fusion}", flush=True)
    print(f"\nsteps: {args.steps}, seed 0, quickstart data and schedule (decays at 9/12 and 11/12 of the run)\n")
    print("| variant | AP | AP50 | train loss (last 3 logs) | fusion weights (mean, normalised) |")
    print("| --- | --- | --- | --- | --- |")
    for name, ap, ap50, loss, fusion in rows:
        print(f"| {name} | {ap:.3f} | {ap50:.3f} | {loss:.3f} | {fusion} |")


if __name__ == "__main__":
    main()
