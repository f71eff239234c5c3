"""Train a model: ``python train.py --config=configs/X.py --workdir=DIR [--config.a.b=v ...]``.

Resumes automatically from the newest intact checkpoint in ``DIR/checkpoints``, and
refuses a work directory another live ``train.py`` holds (``DIR/train.lock``). Writes the
resolved config to ``DIR/config.json``, metrics to ``DIR/metrics.jsonl`` and
``DIR/tensorboard/``, and (if ``train.eval_at_end``) COCO metrics to ``DIR/eval/``.
"""

import argparse
import logging
import sys

from msvision import cli
from msvision import config_sections


def main(argv=None) -> int:
    return cli.run(_main, argv, prog="train.py")


def _main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_sections.add_config_argument(parser)
    parser.add_argument("--workdir", required=True, help="directory for checkpoints, metrics and evaluation")
    parser.add_argument("--log-level", default="INFO")
    cli.add_verbose_flag(parser)
    args = config_sections.parse_args(parser, argv)
    cli.setup_logging(args.log_level)
    config = config_sections.config_from_args(args)  # a ConfigError: one line (msvision.cli)
    from msvision.train import loop

    try:
        loop.train(config, args.workdir)
    except loop.NonFiniteLossError as e:
        logging.error("%s", e)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
