"""Which platforms traced code is meant for, so platform-dependent ops trace only those branches.

Several ops pick an implementation per lowering platform with
``lax.platform_dependent`` (MSDA: Triton on CUDA/ROCm, the native kernel on the
CPU, XLA elsewhere; SPS: Triton or XLA; convolution kernel gradients: im2col on the
CPU). ``lax.platform_dependent`` traces *every* branch it is given, and tracing a
Pallas Triton kernel costs seconds: on a CPU-only machine the unused Triton
branches were half of the 40 s it took to trace the R50-TPN-FQDet train step.

:func:`platform_dependent` therefore keeps only the branches of the platforms the
trace is for (:func:`traced_platforms`), plus the ``default`` branch for any
other platform:

- by default, the platform of the default backend (``cpu``, ``cuda``, ``rocm``,
  ``tpu``): ``jax.jit(f)(x)`` on this machine runs the kernel of this machine, and
  code lowered for another platform without saying so gets the portable
  ``default`` branch (XLA), never a kernel of this machine;
- inside :func:`tracing_for` ``(platforms)``, those platforms. Lowering for other
  platforms than the local one with their kernels (``msvision.analysis.lowering``,
  ``msvision.inference.exporter``, ``jax.jit(f).trace(x).lower(lowering_platforms=...)``) goes
  through it.

A trace is cached by ``jax.jit`` on the function and argument types, not on this
context: trace a function for another platform set with a new ``jax.jit`` object.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Sequence

import jax
from jax import lax

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

_TRACED_FOR: contextvars.ContextVar = contextvars.ContextVar("msvision_traced_for", default=None)


def _canonical(platform: str) -> str:
    name = platform.lower()
    if name == "gpu":  # jax.default_backend()'s name for CUDA and ROCm
        version = str(getattr(jax.devices("gpu")[0].client, "platform_version", "")).lower()
        return "rocm" if "rocm" in version else "cuda"
    if name not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}; choose from {PLATFORMS}")
    return name


def default_platform() -> str:
    """The lowering platform of the default backend: 'cpu', 'cuda', 'rocm' or 'tpu'."""
    return _canonical(jax.default_backend())


@contextlib.contextmanager
def tracing_for(platforms: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """Traces made in this context keep the platform-dependent branches of ``platforms``."""
    names = tuple(dict.fromkeys(_canonical(p) for p in platforms))
    if not names:
        raise ValueError("tracing_for needs at least one platform")
    token = _TRACED_FOR.set(names)
    try:
        yield names
    finally:
        _TRACED_FOR.reset(token)


def traced_platforms() -> tuple[str, ...]:
    """The platforms of the current trace (see the module docstring)."""
    explicit = _TRACED_FOR.get()
    return explicit if explicit is not None else (default_platform(),)


def platform_dependent(*args, default: Callable, **branches: Callable):
    """``lax.platform_dependent(*args, default=default, **branches)`` with only the
    branches of :func:`traced_platforms` (the others fall back to ``default``).

    When no branch is kept, ``default(*args)`` is called directly (no conditional).
    """
    unknown = set(branches) - set(PLATFORMS)
    if unknown:
        raise ValueError(f"unknown platforms {sorted(unknown)}; choose from {PLATFORMS}")
    platforms = traced_platforms()
    kept = {name: fn for name, fn in branches.items() if name in platforms}
    if not kept:
        return default(*args)
    return lax.platform_dependent(*args, default=default, **kept)
