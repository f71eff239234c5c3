"""Loading ml_collections config files with command-line overrides.

A config file is a Python file with ``get_config()`` returning a ``ConfigDict``
(big_vision style). Overrides are ``key.path=value`` strings, as given on the
command line (``--config.model.neck.num_layers=3``); values are parsed as Python
literals and must match the type of the value they replace.

One rule for every section (:func:`resolve_config`): a section's defaults live in
one place — the constructor signature of the module it builds (``model.*``, see
:mod:`msvision.config_schema`) or its ``default_*_config()`` function (``data``,
``optim``, ``train``, ``eval``) — and a key that is not there fails, naming the
closest valid keys, whether it comes from a config file or the command line.
Missing fields are filled with their defaults, so the saved config is complete.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Sequence

import ml_collections

from msvision.config_schema import ConfigError, check_and_complete

__all__ = ["ConfigError", "load_config", "load_config_file", "apply_overrides", "resolve_config", "save_config",
           "sibling_config", "split_config_args"]

TOP_LEVEL_KEYS = ("seed", "model", "data", "optim", "train", "eval")


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Imports ``path`` and returns its ``get_config()`` (text after ``:`` is passed as argument)."""
    arg = None
    if ".py:" in path:
        path, arg = path.split(".py:", 1)
        path += ".py"
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location("msvision_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config() function")
    config = module.get_config() if arg is None else module.get_config(arg)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return a ConfigDict, got {type(config).__name__}")
    return config


def sibling_config(this_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``name`` in the folder of ``this_file``.

    Lets a config file state only its differences from a base config::

        def get_config():
            config = sibling_config(__file__, "r50_fpn.py")
            config.model.neck.name = "tpn"
            return config
    """
    path = os.path.join(os.path.dirname(os.path.abspath(this_file)), name)
    return load_config_file(path if arg is None else f"{path}:{arg}")


def _all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _parse_value(text: str, current: Any, key: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # a bare string such as a path or a name
    if current is None or isinstance(value, type(current)):
        return value
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"--config.{key}: expected a bool, got {text!r}")
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    if isinstance(current, (tuple, list)) and isinstance(value, (int, float, str)):
        return type(current)((value,))
    if isinstance(current, str):
        return text
    raise ConfigError(
        f"--config.{key}: expected {type(current).__name__} (current value {current!r}), got {text!r}"
    )


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies ``key.path=value`` overrides in place and returns ``config``."""
    for item in overrides:
        item = item.removeprefix("--").removeprefix("config.")
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, text = item.split("=", 1)
        parts = key.split(".")
        node = config
        for depth, part in enumerate(parts):
            is_last = depth == len(parts) - 1
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = _all_keys(config)
                close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown config key '{key}'.{hint}")
            if is_last:
                with node.ignore_type():
                    node[part] = _parse_value(text, node[part], key)
            else:
                node = node[part]
    return config


def _section_defaults() -> dict[str, ml_collections.ConfigDict]:
    from msvision.data.pipeline import default_data_config
    from msvision.train.defaults import default_eval_config, default_train_config
    from msvision.train.optimizer import default_optim_config

    return dict(data=default_data_config(), optim=default_optim_config(), train=default_train_config(),
                eval=default_eval_config())


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every section of ``config`` against its schema and fills in defaults (in place).

    Raises:
      ConfigError: an unknown key anywhere (with the closest valid keys).
    """
    from msvision.models.build import resolve_model_config

    for key in config.keys():
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=2, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown top-level config key '{key}'.{hint} Valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    with config.unlocked():
        if "seed" not in config:
            config.seed = 0
        for name, defaults in _section_defaults().items():
            if name not in config:
                config[name] = defaults
            else:
                check_and_complete(config[name], defaults, name)
    if "model" in config:
        resolve_model_config(config.model)
    return config


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """``get_config()`` of ``path``, checked and completed, with ``overrides`` applied.

    The file's config is checked before the overrides (so a misspelled key in the
    file fails even when no override touches it) and again after them (an
    override may switch a module, e.g. ``model.neck.name``).
    """
    config = resolve_config(load_config_file(path))
    return resolve_config(apply_overrides(config, overrides))


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.key=value`` arguments from the others."""
    overrides, rest = [], []
    for arg in argv:
        (overrides if arg.startswith("--config.") else rest).append(arg)
    return overrides, rest


def save_config(config: ml_collections.ConfigDict, path: str) -> None:
    """Writes the resolved config as JSON (and a readable ``.txt`` beside it)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(config.to_dict(), f, indent=2, default=str, sort_keys=True)
        f.write("\n")
    with open(os.path.splitext(path)[0] + ".txt", "w") as f:
        f.write(str(config))
