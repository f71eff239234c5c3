"""Train a model: ``python train.py --config=configs/X.py --workdir=DIR [--config.a.b=v ...]``.

Resumes automatically from the latest checkpoint in ``DIR/checkpoints``. Writes the
resolved config to ``DIR/config.json``, metrics to ``DIR/metrics.jsonl`` and
``DIR/tensorboard/``, and (if ``train.eval_at_end``) COCO metrics to ``DIR/eval/``.
"""

import argparse
import logging
import sys

from msvision import config as config_lib


def main(argv=None) -> int:
    overrides, rest = config_lib.split_config_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file (get_config()), optionally path:arg")
    parser.add_argument("--workdir", required=True, help="directory for checkpoints, metrics and evaluation")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(rest)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    try:
        config = config_lib.load_config(args.config, overrides)
    except config_lib.ConfigError as e:
        parser.error(str(e))
    from msvision.train import loop

    try:
        loop.train(config, args.workdir)
    except loop.NonFiniteLossError as e:
        logging.error("%s", e)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
