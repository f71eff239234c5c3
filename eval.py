"""Evaluate a checkpoint: ``python eval.py --config=configs/X.py --workdir=DIR [--step N] [--visualize N]``.

Restores the orbax checkpoint (the newest intact one unless ``--step``), runs inference on the
validation split, writes ``DIR/eval/results_<step>.json`` (COCO results) and
``DIR/eval/metrics_<step>.json`` (``bbox/AP``, ``bbox/AP50``, …; with a segmentation
head also ``segm/...`` and, with ``eval.box_mask_baseline``, ``box_as_mask/...``;
``checkpoint/skipped``: newer checkpoints that failed verification), prints the
standard COCO table, and with ``--visualize N`` writes N PNGs with predicted boxes (and
masks) and ground-truth boxes to ``DIR/eval/vis_<step>/``. On a panoptic dataset
(``data.source='coco_panoptic'``) it also writes the COCO panoptic predictions
(``DIR/eval/panoptic_<step>/*.png`` + ``panoptic_<step>.json``), reports ``panoptic/PQ``,
``SQ``, ``RQ``, ``PQ_th``, …, ``PQ_st`` and draws the panoptic segmentations (prediction
beside ground truth).
"""

import argparse
import sys

from msvision import cli
from msvision import config_sections


def main(argv=None) -> int:
    return cli.run(_main, argv, prog="eval.py")


def _main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_sections.add_config_argument(parser, help="the config file of the trained model")
    parser.add_argument("--workdir", required=True, help="the work directory of the trained model")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--visualize", type=int, default=0, help="number of images to draw")
    parser.add_argument("--log-level", default="INFO")
    cli.add_verbose_flag(parser)
    args = config_sections.parse_args(parser, argv)
    cli.setup_logging(args.log_level)
    config = config_sections.config_from_args(args)  # a ConfigError: one line (msvision.cli)
    from msvision.train import loop

    trainer, state, step, skipped = loop.restore_for_eval(config, args.workdir, args.step)  # none intact: one line
    # Newer checkpoints that failed verification were logged and passed over; the count goes
    # into the metrics, as train.py's ``checkpoint/skipped``.
    loop.evaluate_state(trainer, state, args.workdir, step, visualize_count=args.visualize,
                        extra_metrics={"checkpoint/skipped": float(len(skipped))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
