"""Config files, command-line overrides and resolving a config against its section schemas.

A config file is a Python file with ``get_config()`` returning a ``ConfigDict``
(big_vision style). Overrides are ``key.path=value`` strings, as given on the
command line (``--config.model.neck.num_layers=3``); values are parsed as Python
literals and must match the type of the value they replace.

One rule for every section (:func:`resolve_config`): a section's defaults live in
one place — the constructor signature of what it configures (the ``model`` parts'
modules, :mod:`msvision.config_schema`; a frozen dataclass for ``data``, ``optim``,
``train``, ``eval``) — and a key that is not there fails, naming the closest valid
keys, whether it comes from a config file or the command line. Missing fields are
filled with their defaults, so the saved config is complete.

This module knows no section: the schemas are passed in (``sections``; the run
config's are listed in :mod:`msvision.config_sections`, which the commands use). It
imports nothing from the models, data or training, and changes no config it is given.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
from typing import Any, Mapping, Sequence

import ml_collections

from msvision.config_schema import ConfigError, resolve_section, signature_schema, unknown_key_error

__all__ = ["ConfigError", "load_config", "load_config_file", "apply_overrides", "resolve_config", "save_config",
           "read_saved_config", "sibling_config", "split_config_args"]

# A section's schema: a frozen dataclass (its fields and their defaults), a function
# returning the section resolved (model: the schema of a part depends on its name), or
# the default value of a top-level field (seed).
SectionSchema = Any


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
    """A copy of ``config`` with the ``key.path=value`` overrides applied (``config`` is unchanged).

    Why not ``ml_collections.config_flags``: it parses with absl flags (our commands take
    positional arguments and ``argparse`` options, and would change their command lines);
    it cannot override a field whose value is None (``model.head.loss.box_weight``,
    ``model.backbone.blocks_per_stage``); it applies the overrides to the file's config as
    written, before the section schemas fill in their defaults, so a field the file leaves
    at its default (``--config.train.eval_every=750`` on a file without ``train``) is an
    error; and an unknown key gives a ``KeyError`` without the section's closest valid
    keys. This is the one override parser: every command reaches it through
    :mod:`msvision.config_sections`. Values are Python literals (``(100,150,300)``,
    ``1e-4``, ``True``) converted to the type of the value they replace (an int for a
    float, one value for a tuple, ``true``/``false`` for a bool); anything else is a
    string (``/path/resnet50.pth``); a None field takes any literal.

    Raises:
      ConfigError: an override not of the form ``key.path=value``, an unknown key (with
        the closest valid keys of its section) or a value of the wrong type.
    """
    config = config.copy_and_resolve_references()
    for item in overrides:
        item = item.removeprefix("--").removeprefix("config.")
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, text = item.split("=", 1)
        parts = key.split(".")
        node, named = config, ""
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(f"unknown config key '{key}': '{'.'.join(parts[:depth])}' is a value, not a section")
            if "name" in node and depth:  # a section naming its module (a model part): the schema is that module's
                named = f"{parts[depth - 1]} {node['name']!r}"
            if part not in node:
                within = f"in --config.{key}" if depth < len(parts) - 1 else ""
                raise unknown_key_error(".".join(parts[:depth]), part, list(node.keys()),
                                        ", ".join(filter(None, (named, within))))
            if depth == len(parts) - 1:
                with node.ignore_type():
                    node[part] = _parse_value(text, node[part], key)
            else:
                node = node[part]
    return config


_ABSENT = object()


def _resolve_entry(name: str, given: Any, schema: SectionSchema) -> Any:
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        return resolve_section({} if given is _ABSENT else given, signature_schema(schema), name)
    if callable(schema):
        return schema(ml_collections.ConfigDict() if given is _ABSENT else given)
    return schema if given is _ABSENT else given


def resolve_config(config: ml_collections.ConfigDict, sections: Mapping[str, SectionSchema]
                   ) -> ml_collections.ConfigDict:
    """``config`` checked against the schemas of ``sections`` and completed: a new config
    (``config`` is unchanged).

    Args:
      config: the config as given (a config file's ``get_config()``) or resolved already.
      sections: ``{top-level key: schema}``; a schema is a frozen dataclass (the fields of
        the section and their defaults), a function returning the section resolved (it
        must not change its argument) or a top-level value's default.

    Raises:
      ConfigError: an unknown key anywhere (with the closest valid keys).
    """
    for key in config.keys():
        if key not in sections:
            raise unknown_key_error("", key, list(sections))
    out = ml_collections.ConfigDict()
    for name, schema in sections.items():
        out[name] = _resolve_entry(name, config[name] if name in config else _ABSENT, schema)
    return out


def load_config(path: str, overrides: Sequence[str] = (), *, sections: Mapping[str, SectionSchema]
                ) -> ml_collections.ConfigDict:
    """``get_config()`` of ``path``, resolved against ``sections``, with ``overrides`` applied.

    The file's config is checked before the overrides (so a misspelled key in the
    file fails even when no override touches it, and an override may set a field
    the file leaves at its default) and again after them.
    """
    config = resolve_config(load_config_file(path), sections)
    return resolve_config(apply_overrides(config, overrides), sections)


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


def read_saved_config(path: str) -> ml_collections.ConfigDict:
    """A config written by :func:`save_config` (``WORKDIR/config.json``), as it was written.

    Not resolved: a saved config is the record of a run, not a config to run, and may
    hold fields of switches deleted since (e.g. ``model.backbone.scan_blocks``,
    ``optim.flatten`` in the records under ``benchmarks/``); a reader takes the fields
    it needs.
    """
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))

