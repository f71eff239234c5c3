"""Publish a run's weights: a verified, model-only checkpoint to share or keep in a repository.

    python -m msvision.train.publish --workdir=runs/large/detector --out=weights/large_detector [--step N]

A training checkpoint holds the optimizer state (AdamW: twice the parameters again), the
RNG and the data iterator. What another run needs from it — ``train.init_from``,
``python -m msvision.predict``, ``msvision.export`` — is the model alone: ``params`` and
``rest`` (the non-trainable variables). This writes them, read from the newest intact
checkpoint of ``--workdir`` (or ``--step``), as an orbax checkpoint of the same layout
(``OUT/checkpoints/<step>/`` with its ``checksums.json``, so every restore verifies it)
plus the run's ``config.json`` and ``dataset.json`` (the class list), about a third of the
training checkpoint's size — MMDetection's ``publish_model`` and detectron2's model-zoo
files do the same. ``eval.py`` and resuming training need the full checkpoint.

The chapter 5 comparison on large objects ships its shared detector this way
(``benchmarks/weights/large_detector``, see ``benchmarks/run_mask_heads_large.sh``), so the
heads can be trained without first retraining the detector for 85 minutes.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from typing import Optional

import jax

from msvision import checkpoint as checkpoint_lib

log = logging.getLogger(__name__)

PARTS = ("params", "rest")  # what a model needs; the optimizer state, RNG and data position stay behind
COPIED = ("config.json", "dataset.json")  # the run's config and class list, read by predict/eval


def publish(workdir: str, out: str, step: Optional[int] = None) -> int:
    """Writes ``params`` and ``rest`` of ``workdir``'s newest intact checkpoint (or ``step``)
    to ``out/checkpoints/<step>/`` (verified on every restore) with the run's
    ``config.json`` and ``dataset.json``; returns the step.

    Raises:
      NoCheckpointError: ``workdir`` has no intact checkpoint (or ``step`` is not one).
      FileExistsError: ``out`` already holds a checkpoint (publishing never overwrites).
    """
    source_dir = os.path.join(workdir, "checkpoints")
    if not checkpoint_lib.checkpoint_steps(source_dir):
        raise checkpoint_lib.NoCheckpointError(f"no checkpoint to publish in {os.path.abspath(source_dir)}")
    step, skipped = checkpoint_lib.select_checkpoint(os.path.abspath(source_dir), step)
    out_dir = os.path.join(out, "checkpoints")
    if checkpoint_lib.checkpoint_steps(out_dir):
        raise FileExistsError(f"{os.path.abspath(out_dir)} already holds checkpoints "
                              f"{checkpoint_lib.checkpoint_steps(out_dir)}: publish into a new directory")
    source = checkpoint_lib.Checkpointer(source_dir, every_steps=0)
    try:
        saved = source.state_metadata(step)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = {part: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved[part])
                    for part in PARTS if part in saved}
        _, model = source.restore_subtree(abstract, step=step)
    finally:
        source.close()
    target = checkpoint_lib.Checkpointer(out_dir, every_steps=0, keep=1, async_save=False)
    try:
        run = os.path.basename(os.path.normpath(workdir))  # its name only: the artefact travels
        target.save(step, model, meta=dict(published_from=run, parts=sorted(model)))
    finally:
        target.close()
    # orbax's commit markers hold the absolute path of the writing machine; a published
    # checkpoint is meant to travel, so they keep only their message (orbax checks that
    # they exist) and the checksums are taken again.
    step_dir = os.path.join(out_dir, str(step))
    for root, _, files in os.walk(step_dir):
        if "commit_success.txt" in files:
            with open(os.path.join(root, "commit_success.txt"), "w") as f:
                f.write("Checkpoint commit was successful")
    checkpoint_lib.write_manifest(step_dir)
    for name in COPIED:
        if os.path.exists(os.path.join(workdir, name)):
            shutil.copyfile(os.path.join(workdir, name), os.path.join(out, name))
    sizes = {d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(d, "checkpoints", str(step)))
                    for f in fs) for d in (workdir, out)}
    log.info("published %s of step %d of %s to %s (%.1f MB; the training checkpoint: %.1f MB)%s",
             "+".join(sorted(model)), step, workdir, out, sizes[out] / 1e6, sizes[workdir] / 1e6,
             f"; skipped newer damaged checkpoints {[s.step for s in skipped]}" if skipped else "")
    return step


def main(argv=None) -> int:
    from msvision import cli

    return cli.run(_main, argv, prog="python -m msvision.train.publish")


def _main(argv) -> int:
    from msvision import cli

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the training run")
    parser.add_argument("--out", required=True, help="the new directory of the published weights")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest intact)")
    cli.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    cli.setup_logging("INFO")
    publish(args.workdir, args.out, args.step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
