"""Config sections that map one to one onto constructor signatures.

The rule (big_vision's ``Model(**config.model)``): a module's constructor keyword
arguments *are* its config schema, and their defaults live in the signature only.
A keyword argument whose default is a frozen dataclass (e.g.
:class:`msvision.ops.anchors.AnchorSpec`) is a nested config section whose fields
are the dataclass's fields. Arguments the builder supplies (``rngs``, ``dtype``,
``in_channels``, ``num_classes`` …) are not config fields. The sections that build
no module (``data``, ``optim``, ``train``, ``eval``) follow the same rule with a
frozen dataclass as their constructor (:mod:`msvision.config_sections`).

:func:`signature_schema` reads a schema; :func:`resolve_section` validates a
``ConfigDict`` section against a schema — every unknown key fails, naming the
closest valid keys — and returns a new section with the missing fields at their
defaults, so the config written to the work directory is the config actually used;
:func:`section_kwargs` turns a resolved section back into constructor arguments.
Nothing here changes the section it is given.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
from typing import Any, Callable, Mapping, Sequence

import ml_collections

Schema = dict  # {field: default value | nested Schema}


class ConfigError(ValueError):
    """A config file or an override is wrong; the message says how."""


def _dataclass_schema(value: Any) -> Schema:
    return {
        f.name: _dataclass_schema(getattr(value, f.name)) if dataclasses.is_dataclass(getattr(value, f.name))
        else getattr(value, f.name)
        for f in dataclasses.fields(value)
    }


def signature_schema(fn: Callable, supplied: tuple[str, ...] = ()) -> Schema:
    """The config schema of ``fn``'s keyword arguments (a class: its ``__init__``).

    Args:
      fn: a class or function (a frozen dataclass: its fields).
      supplied: argument names the builder passes itself (not config fields).

    Raises:
      TypeError: a parameter that is neither supplied nor has a default (it could
        not be configured).
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    schema: Schema = {}
    for name, p in inspect.signature(target).parameters.items():
        if name in ("self", *supplied) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{getattr(fn, '__qualname__', fn)}: parameter {name!r} has no default and is not "
                            "supplied by the builder, so no config could set it")
        schema[name] = _dataclass_schema(p.default) if dataclasses.is_dataclass(p.default) else p.default
    return schema


def _to_configdict(value: Any) -> Any:
    if isinstance(value, Mapping):
        return ml_collections.ConfigDict({k: _to_configdict(v) for k, v in value.items()})
    return copy.deepcopy(value)


def schema_config(schema: Schema) -> ml_collections.ConfigDict:
    """A ``ConfigDict`` holding every field of ``schema`` at its default."""
    return _to_configdict(schema)


def section_defaults(cls: type) -> ml_collections.ConfigDict:
    """Every field of the section whose schema is the constructor of ``cls`` (e.g. a frozen
    dataclass), at its default: ``section_defaults(OptimConfig)``."""
    return schema_config(signature_schema(cls))


def unknown_key_error(path: str, key: str, valid: Sequence[str], what: str = "") -> ConfigError:
    """The error of every unknown key, from a file or the command line: ``'<path>.<key>'``,
    the closest valid keys of that section and all of them."""
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
    full = f"{path}.{key}" if path else key
    hint = f" Did you mean: {', '.join(f'{path}.{c}' if path else c for c in close)}?" if close else ""
    where = f" ({what})" if what else ""
    return ConfigError(f"unknown config key '{full}'{where}.{hint} Valid keys: {', '.join(sorted(valid))}")


def resolve_section(section: Any, schema: Mapping[str, Any], path: str, what: str = "") -> ml_collections.ConfigDict:
    """``section`` checked against ``schema`` and completed: a new ``ConfigDict``.

    Args:
      section: the config section as given (a ``ConfigDict`` or dict, e.g.
        ``config.model.neck``); not changed.
      schema: :func:`signature_schema` output (nested dicts for nested sections).
      path: the section's dotted path, for messages (``'model.neck'``).
      what: a note for messages (``"neck 'tpn'"``).

    Returns:
      Every field of ``schema``: the value given, else the default.

    Raises:
      ConfigError: a key of ``section`` is not in ``schema`` (the message names the
        closest valid keys), or a section is given as a plain value.
    """
    if not isinstance(section, Mapping) and not isinstance(section, ml_collections.ConfigDict):
        raise ConfigError(f"config key '{path}' is a section with fields {sorted(schema)}, got the value {section!r}")
    out = ml_collections.ConfigDict()
    for key in section.keys():
        if key not in schema:
            raise unknown_key_error(path, key, list(schema), what)
    for key, ref in schema.items():
        if isinstance(ref, Mapping):
            given = section[key] if key in section else {}
            out[key] = resolve_section(given, ref, f"{path}.{key}", what)
        elif key in section:
            value = section[key]
            out[key] = value.copy_and_resolve_references() if isinstance(value, ml_collections.ConfigDict) \
                else copy.deepcopy(value)
        else:
            out[key] = _to_configdict(ref)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(value)  # JSON round trips turn tuples into lists
    return value


def section_kwargs(section: ml_collections.ConfigDict, fn: Callable, skip: tuple[str, ...] = ()) -> dict:
    """Constructor keyword arguments of ``fn`` from a resolved config section.

    Nested sections become the dataclass of the parameter's default
    (``AnchorSpec(**section.anchors)``); keys in ``skip`` (builder-level fields
    such as ``name``) are left out.
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = inspect.signature(target).parameters
    kwargs = {}
    for key, value in section.items():
        if key in skip:
            continue
        default = params[key].default
        value = _plain(value)
        if dataclasses.is_dataclass(default):
            value = _build_dataclass(type(default), value)
        kwargs[key] = value
    return kwargs


def _build_dataclass(cls: type, values: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        default = getattr(cls(), key) if fields[key].default is dataclasses.MISSING else fields[key].default
        out[key] = _build_dataclass(type(default), value) if dataclasses.is_dataclass(default) else value
    return cls(**out)
