"""R50-FPN-RetinaNet: msvision (JAX) against torchvision's retinanet_resnet50_fpn on the CPU.

Measures in one process, with the same number of threads for both:
  * inference: one 800×800 image, batch 1 (ours: ``Detector.predict`` incl. NMS;
    torchvision: ``model.eval()(images)`` incl. its post-processing);
  * training: one optimizer step (forward + backward + AdamW) on two 800×800 images
    with ten objects each;
  * achieved FLOP/s of our train step (XLA cost analysis) against the FLOP/s of a
    large float32 matmul measured in the same run (the machine's practical peak).

Both models have random weights. Two rows of ours:
  * ``like torchvision``: our RetinaNet configured as torchvision's (C = 4 hidden
    convs, 3×3 last layers, 91 classes, P6 from the 256-channel P5): the same
    network, so the time ratio compares implementations (parameter counts printed
    to show they agree);
  * ``thesis``: the thesis's C = 1 head with 1×1 last layers and 80 classes
    (smaller than torchvision's: its ratio is not like for like).
The jax/jaxlib and torch versions and builds, the thread count and the load
average are printed with the table.

    python benchmarks/bench_retinanet.py [--repeats 5] [--markdown]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from msvision.analysis.cost import synthetic_batch
from msvision.config_sections import load_config
from msvision.models.build import build_model
from msvision.train.loop import make_predict_step, make_train_step
from msvision.train.optimizer import build_optimizer
from timing import median_seconds  # noqa: E402  (benchmarks/timing.py)

ROOT = os.path.join(os.path.dirname(__file__), "..")




LIKE_TORCHVISION = [  # torchvision retinanet_resnet50_fpn(num_classes=91), random weights
    "--config.model.num_classes=91", "--config.model.head.subnets.num_convs=4",
    "--config.model.head.subnets.last_kernel_size=3",
]


def ours(repeats: int, overrides=(), train: bool = True) -> dict:
    """Our RetinaNet from ``configs/retinanet/r50_fpn.py`` with ``overrides``: inference and (``train``) train-step seconds."""
    config = load_config(os.path.join(ROOT, "configs/retinanet/r50_fpn.py"), list(overrides))
    model = build_model(config.model, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, schedules = build_optimizer(config.optim, params, steps_per_epoch=1000)
    state = dict(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                 rng=jax.random.PRNGKey(0))
    infer_batch = jax.device_put(synthetic_batch(1, 800, 10, config.model.num_classes))
    train_batch = jax.device_put(synthetic_batch(2, 800, 10, config.model.num_classes))

    predict = jax.jit(make_predict_step(graphdef))
    pcost = predict.lower(params, rest, infer_batch).compile().cost_analysis()
    pcost = pcost[0] if isinstance(pcost, (list, tuple)) else pcost
    infer_s = median_seconds(lambda: jax.block_until_ready(predict(params, rest, infer_batch)), repeats)
    from msvision.models.layers import count_variables

    result = dict(infer_s=infer_s, infer_flops=float(pcost["flops"]), params=count_variables(model, nnx.Param))
    if not train:
        return result
    train_step = jax.jit(make_train_step(graphdef, tx, schedules), donate_argnums=(0,))
    train_compiled = train_step.lower(state, train_batch).compile()
    cost = train_compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    train_flops = float(cost["flops"])
    holder = [state]

    def step():
        holder[0], metrics = train_compiled(holder[0], train_batch)
        jax.block_until_ready(metrics)

    return dict(result, train_s=median_seconds(step, repeats), train_flops=train_flops)


def torchvision_reference(repeats: int, threads: int, bfloat16: bool = False, train: bool = True) -> dict:
    """torchvision's RetinaNet timed as :func:`ours`; ``bfloat16``: under
    ``torch.autocast("cpu", dtype=torch.bfloat16)`` with channels-last model and images."""
    import contextlib

    import torch
    import torchvision

    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # retinanet_resnet50_fpn's architecture with the thesis's backbone treatment (as
    # ours): frozen BatchNorm, stem + layer1 frozen. (Its weights=None default would
    # train every layer with batch-statistics BatchNorm: a different, slower network.)
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = torchvision.models.detection.RetinaNet(backbone, num_classes=91)
    rng = np.random.default_rng(0)

    def targets():
        out = []
        for _ in range(2):
            xy = rng.uniform(0, 600, (10, 2))
            wh = rng.uniform(32, 200, (10, 2))
            boxes = torch.tensor(np.concatenate([xy, np.minimum(xy + wh, 799)], 1), dtype=torch.float32)
            out.append(dict(boxes=boxes, labels=torch.tensor(rng.integers(1, 91, 10))))
        return out

    layout = torch.channels_last if bfloat16 else torch.contiguous_format
    model = model.to(memory_format=layout)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bfloat16 else contextlib.nullcontext()

    model.eval()
    image = [torch.rand(3, 800, 800)]

    def infer():
        with torch.no_grad(), autocast():
            model(image)

    infer_s = median_seconds(infer, repeats)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not train:
        return dict(infer_s=infer_s, params=trainable, version=torch.__version__)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    images = [torch.rand(3, 800, 800) for _ in range(2)]
    tgts = targets()

    def step():
        with autocast():
            losses = model(images, tgts)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train_s = median_seconds(step, repeats)
    return dict(infer_s=infer_s, train_s=train_s, params=trainable, version=torch.__version__)


def matmul_flops_per_s(n: int = 4096, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    seconds = median_seconds(lambda: jax.block_until_ready(mm(a, b)), repeats)
    return 2 * n**3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for RESULTS.md")
    args = parser.parse_args()
    import jaxlib

    threads = os.cpu_count()
    load = os.getloadavg()[0]
    peak = matmul_flops_per_s()
    like = ours(args.repeats, LIKE_TORCHVISION)
    thesis = ours(args.repeats)
    ref = torchvision_reference(args.repeats, threads)
    print(f"threads: {threads} (torch.set_num_threads and XLA's CPU pool), load average at start: {load:.2f}, "
          f"jax {jax.__version__} / jaxlib {jaxlib.__version__}, torch {ref['version']}, "
          f"backend {jax.default_backend()}")
    print(f"trainable params: ours like torchvision {like['params'] / 1e6:.2f} M, torchvision "
          f"{ref['params'] / 1e6:.2f} M, ours thesis C=1 {thesis['params'] / 1e6:.2f} M")
    if args.markdown:
        print("| network | measurement | msvision (s) | torchvision (s) | torchvision / msvision |")
        print("| --- | --- | --- | --- | --- |")
    for label, mine in (("like torchvision (same network)", like), ("thesis C=1, 80 classes", thesis)):
        for name, a, b in (("inference, 1×800×800", mine["infer_s"], ref["infer_s"]),
                           ("train step, 2×800×800", mine["train_s"], ref["train_s"])):
            if args.markdown:
                print(f"| {label} | {name} | {a:.3f} | {b:.3f} | {b / a:.2f}× |")
            else:
                print(f"{label:34s} {name:24s} msvision {a:8.3f}  torchvision {b:8.3f}  ratio {b / a:5.2f}")
        rate = mine["train_flops"] / mine["train_s"]
        print(f"{label}: inference {mine['infer_flops'] / 2e9:.1f} GMACs, train step "
              f"{mine['train_flops'] / 2e9:.1f} GMACs at {rate / 1e9:.1f} GFLOP/s = {100 * rate / peak:.1f}% of a "
              f"float32 4096² matmul ({peak / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
