"""The ``train`` and ``eval`` sections at their defaults, for config files that start from
them (``config.train = default_train_config()``); the schemas are
:class:`msvision.config_sections.TrainConfig` and :class:`~msvision.config_sections.EvalConfig`."""

import ml_collections

from msvision.config_sections import default_section


def default_train_config() -> ml_collections.ConfigDict:
    return default_section("train")


def default_eval_config() -> ml_collections.ConfigDict:
    return default_section("eval")
