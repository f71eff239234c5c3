"""Small-scale analogue of thesis tables 4.2 (matching) and 4.5 (anchor types) on synthetic data.

Trains ``configs/fqdet/quickstart_fqdet.py`` for the same number of steps, seed and
data with: static top-k matching (ours), absolute IoU matching (Faster R-CNN),
Hungarian matching, and top-k matching with one anchor type instead of nine.
Writes ``OUT/<variant>/`` work directories, ``OUT/convergence.png`` (training loss
and final AP per variant) and prints a Markdown table. Finished variants are read
back instead of retrained.

    python benchmarks/fqdet_convergence_synthetic.py --steps 300 --out runs/fqdet_convergence
"""

from __future__ import annotations

import argparse
import json
import os

from msvision.config_sections import load_config
from msvision.train.metrics import read_metrics

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

VARIANTS = {
    "topk_9anchors": {},
    "absolute_9anchors": {"matcher": {"matching": "absolute"}},
    "hungarian_9anchors": {"matcher": {"matching": "hungarian"}},
    "topk_1anchor": {"anchors": {"num_sizes": 1, "aspect_ratios": (1.0,)}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="runs/fqdet_convergence")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    from msvision.train import loop

    results = {}
    for name in args.variants:
        config = load_config(os.path.join(ROOT, "configs/fqdet/quickstart_fqdet.py"))
        for section, fields in VARIANTS[name].items():
            config.model.head[section].update(fields)
        config.train.num_steps = args.steps
        config.train.log_every = 20
        config.train.checkpoint_every = 0
        config.eval.visualize = 0
        workdir = os.path.join(args.out, name)
        metrics_file = os.path.join(workdir, "eval", f"metrics_{args.steps}.json")
        if not os.path.exists(metrics_file):
            loop.train(config, workdir)
        with open(metrics_file) as f:
            final = json.load(f)
        curve = [(r["step"], r["train/loss"]) for r in read_metrics(workdir) if "train/loss" in r]
        results[name] = (final, curve)
        print(f"{name}: AP {final['bbox/AP']:.3f} AP50 {final['bbox/AP50']:.3f}", flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    for name, (final, curve) in results.items():
        steps, losses = zip(*curve)
        ax_loss.plot(steps, losses, label=name)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (sum of the head's losses)")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    names = list(results)
    ax_ap.bar(names, [results[n][0]["bbox/AP50"] for n in names], label="AP50")
    ax_ap.bar(names, [results[n][0]["bbox/AP"] for n in names], label="AP")
    ax_ap.set_ylabel(f"val bbox AP after {args.steps} steps")
    ax_ap.tick_params(axis="x", rotation=20)
    ax_ap.legend()
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    fig.savefig(os.path.join(args.out, "convergence.png"), dpi=100)

    print(f"\nsteps: {args.steps}, seed 0, quickstart data\n")
    print("| variant | AP | AP50 | AP75 | final training loss |")
    print("| --- | --- | --- | --- | --- |")
    for name, (final, curve) in results.items():
        print(
            f"| {name} | {final['bbox/AP']:.3f} | {final['bbox/AP50']:.3f} | {final['bbox/AP75']:.3f} | "
            f"{curve[-1][1]:.2f} |"
        )


if __name__ == "__main__":
    main()
