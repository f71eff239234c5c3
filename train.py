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
from msvision import config as config_lib


def main(argv=None) -> int:
    return cli.run(_main, argv, prog="train.py")


def _main(argv) -> int:
    overrides, rest = config_lib.split_config_args(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file (get_config()), optionally path:arg")
    parser.add_argument("--workdir", required=True, help="directory for checkpoints, metrics and evaluation")
    parser.add_argument("--log-level", default="INFO")
    cli.add_verbose_flag(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    config = config_lib.load_config(args.config, overrides)  # a ConfigError: one line (msvision.cli)
    from msvision.train import loop

    try:
        loop.train(config, args.workdir)
    except loop.NonFiniteLossError as e:
        logging.error("%s", e)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
