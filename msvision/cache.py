"""What msvision keeps between runs on one machine, under ``$MSVISION_CACHE`` (default ``~/.cache/msvision``).

- ``msda_cpu/``: the native CPU MSDA kernel, built on first use
  (:mod:`msvision.ops.msda.cpu_ffi`).
- ``onednn_conv/``: the oneDNN convolution kernel, built on first use
  (:mod:`msvision.ops.onednn`).
- ``xla/``: JAX's persistent compilation cache, turned on by ``train.py``,
  ``eval.py`` and ``predict.py`` (:func:`enable_compilation_cache`): a resumed or
  repeated run of a config loads its compiled steps instead of compiling them
  again (R50-TPN(3,2) RetinaNet train step, 2 CPU cores: XLA compile 80 s, loaded
  from the cache 21 s; the Python trace, ~12 s, is not cached). Entries are keyed
  by the computation, the XLA flags and the jax/jaxlib versions, so a stale entry
  is never used. Set ``MSVISION_COMPILATION_CACHE=off`` to turn it off, or
  ``JAX_COMPILATION_CACHE_DIR`` to use another directory (then JAX's own settings
  apply untouched).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import jax

log = logging.getLogger(__name__)

DISABLE_ENV = "MSVISION_COMPILATION_CACHE"
# Only computations that take this long to compile are stored: the train and predict
# steps, not the many small helper functions (keeps the directory small).
MIN_COMPILE_TIME_S = 2.0


def cache_root() -> str:
    return os.environ.get("MSVISION_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "msvision")


def enable_compilation_cache() -> Optional[str]:
    """Points JAX's persistent compilation cache at ``$MSVISION_CACHE/xla`` and returns it.

    Returns None (and changes nothing) when ``MSVISION_COMPILATION_CACHE`` is off or
    a cache directory is already set (``JAX_COMPILATION_CACHE_DIR`` or
    ``jax.config``). Call it before the first compilation of the process.
    """
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("off", "0", "false", "no"):
        return None
    if jax.config.jax_compilation_cache_dir:
        return None
    path = os.path.join(cache_root(), "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:  # a read-only home: run without the cache
        log.warning("compilation cache disabled: cannot create %s (%s)", path, error)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    log.info("persistent compilation cache: %s (%s=off disables it)", path, DISABLE_ENV)
    return path
