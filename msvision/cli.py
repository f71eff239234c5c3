"""What every command answers a bad input with: one line naming the file and what is wrong.

``train.py``, ``eval.py``, ``python -m msvision.predict``, ``msvision.export``,
``msvision.analysis`` and the evaluator commands (``msvision.evaluation.panoptic``,
``msvision.evaluation.lvis``) run their ``main`` through :func:`run`: a missing file,
a file that is not valid JSON, a JSON of the wrong schema, a work directory without
an intact checkpoint or held by another run print ``<command>: error: <file>: <what
is wrong>`` on stderr and exit with status 2. The traceback is printed only with
``--verbose`` (every command accepts it) or ``MSVISION_VERBOSE=1``. Errors that are
not about the inputs (bugs) keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional

VERBOSE_ENV = "MSVISION_VERBOSE"
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """A file given to a command is missing, is not valid JSON or has the wrong schema;
    the message starts with the file's path."""


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def read_json(path: Any, what: str = "") -> Any:
    """The parsed contents of the JSON file ``path``.

    Raises:
      InputError: the file is missing, unreadable or not valid JSON (the message names
        it, ``what`` says what the file was for).
    """
    path = os.fspath(path)
    hint = f" ({what})" if what else ""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file{hint}") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, not a JSON file{hint}") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied{hint}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a JSON (text) file{hint}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON{hint}: {e.msg} at line {e.lineno}, column {e.colno}") from None


def require(condition: bool, path: Any, message: str) -> None:
    """Raises :class:`InputError` ``"<path>: <message>"`` unless ``condition``."""
    if not condition:
        raise InputError(f"{os.fspath(path)}: {message}")


def check_records(data: Any, key: str, fields: Sequence[str], path: Any, *, optional: bool = False) -> list:
    """``data[key]``, checked to be a list of objects that each have ``fields``.

    ``data`` must be an object; with ``optional`` a missing ``key`` reads as ``[]``.
    """
    require(isinstance(data, dict), path, f"expected a JSON object at the top, got {_type_name(data)}")
    if key not in data:
        require(optional, path, f"has no '{key}'")
        return []
    records = data[key]
    return check_record_list(records, f"'{key}'", fields, path)


def check_record_list(records: Any, name: str, fields: Sequence[str], path: Any) -> list:
    """``records``, checked to be a list of objects that each have ``fields``; ``name`` is how
    the message calls it (e.g. ``"'annotations'"``)."""
    require(isinstance(records, list), path, f"{name} must be a list, got {_type_name(records)}")
    for i, record in enumerate(records):
        require(isinstance(record, dict), path, f"{name}[{i}] must be an object, got {_type_name(record)}")
        missing = [f for f in fields if f not in record]
        require(not missing, path, f"{name}[{i}] has no '{missing[0]}'" if missing else "")
    return records


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help=f"on an error, print the traceback too (also {VERBOSE_ENV}=1)")


def setup_logging(level: str) -> None:
    """Log lines with time, level and logger at ``level``; absl (orbax) only from WARNING on,
    as it logs every checkpoint save at INFO. ``force``: importing orbax already gave the root
    logger a WARNING-level handler (absl's ``log`` calls ``logging.basicConfig()``), which would
    otherwise keep every INFO line (e.g. "resuming from step N") from showing."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)


def _user_errors() -> tuple[type, ...]:
    from msvision.config_schema import ConfigError
    from msvision.train.workdir_lock import WorkdirLockedError

    # OSError covers missing files and folders (FileNotFoundError, the checkpoint
    # errors) and unreadable images; JSONDecodeError one read without read_json.
    return InputError, OSError, json.JSONDecodeError, ConfigError, WorkdirLockedError


def describe_error(error: BaseException) -> str:
    """One line: ``<file>: <what>`` for an OS error with a file name, else the message."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
    text = " ".join(str(error).split())
    return text or type(error).__name__


def run(main: Callable[[list[str]], int], argv: Optional[Sequence[str]] = None, *, prog: str) -> int:
    """``main(argv)``; a bad input becomes one line on stderr and exit status 2 (see the module
    docstring), unless ``--verbose`` is in ``argv`` or ``MSVISION_VERBOSE`` is set."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    try:
        return main(argv)
    except _user_errors() as e:
        if verbose:
            raise
        print(f"{prog}: error: {describe_error(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
