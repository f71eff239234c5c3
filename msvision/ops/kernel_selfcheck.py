"""Never run an unverified kernel silently: a first-use self-check of hand-written kernels.

A Pallas kernel written without access to the hardware it targets (msvision's MSDA
Triton kernel was only run in interpret mode and lowered for CUDA on a CPU) can fail
to compile or compute wrong numbers on a real GPU. Every such kernel is registered
here with a small check: on the first selection in a process whose default backend
is one the check covers (a GPU), the kernel and its trusted reference (the XLA
implementation) run eagerly on small inputs, in a separate thread outside any ``jit`` trace, and their
outputs (forward and gradients) are compared. The verdict is cached per process and
backend; a kernel that fails to compile, raises or disagrees is not used, with a
warning, and the caller falls back to its reference implementation.

When the default backend is not covered (lowering for CUDA on a CPU-only machine,
``python -m msvision.analysis --lower-for=cuda``), no check runs and the kernel is
selected: nothing executes there, and the kernel is what a GPU would run.

Mode (environment variable ``MSVISION_KERNEL_SELFCHECK`` or :func:`set_mode`):
``"auto"`` (default) checks as above; ``"skip"`` trusts every kernel without a
check; ``"off"`` never selects a registered kernel (always the fallback).

Registering a kernel (the pattern of :mod:`msvision.ops.msda.auto`)::

    from msvision.ops import kernel_selfcheck

    SPS_KERNEL = "sps_gather_conv_triton"

    def _check_inputs():            # small, deterministic numpy inputs
        rng = np.random.default_rng(0)
        return (rng.standard_normal((64, 8), np.float32), ...)

    def _outputs(op):               # forward and gradients of one implementation
        def run(features, ...):
            out, vjp = jax.vjp(lambda f: op(f, ...), features)
            return out, vjp(cotangent)
        return run

    kernel_selfcheck.register_kernel(
        SPS_KERNEL, kernel=_outputs(sps_triton), reference=_outputs(sps_xla),
        make_inputs=_check_inputs, rtol=1e-4, atol=1e-5)

    # In the op's impl="auto" dispatch (called while tracing, possibly under jit):
    if kernel_selfcheck.kernel_enabled(SPS_KERNEL):
        return lax.platform_dependent(..., cuda=sps_triton, default=sps_xla)
    return sps_xla(...)

``kernel`` and ``reference`` take the tuple from ``make_inputs`` as positional
arguments and return a pytree of arrays (compared leaf by leaf); ``kernel`` must
call the kernel directly, never the ``"auto"`` dispatch (that would recurse).
Keep the check small (well under a second of compile and run): it runs once per
process on the first call.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
import traceback
import warnings
from typing import Any, Callable, Optional

import jax
import numpy as np

log = logging.getLogger(__name__)

ENV_VAR = "MSVISION_KERNEL_SELFCHECK"
MODES = ("auto", "skip", "off")


class KernelFallbackWarning(RuntimeWarning):
    """A registered kernel failed its self-check; its reference implementation is used."""


@dataclasses.dataclass(frozen=True)
class KernelCheck:
    """A registered kernel: how to compare it with its reference on small inputs."""

    name: str
    kernel: Callable[..., Any]
    reference: Callable[..., Any]
    make_inputs: Callable[[], tuple]
    rtol: float = 1e-4
    atol: float = 1e-5
    backends: tuple[str, ...] = ("gpu",)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The cached outcome of one check: ``ok`` and, when not, why (an error or the largest mismatch)."""

    name: str
    backend: str
    ok: bool
    reason: str
    seconds: float


_REGISTRY: dict[str, KernelCheck] = {}
_VERDICTS: dict[tuple[str, str], Verdict] = {}
_LOCK = threading.RLock()
_MODE_OVERRIDE: Optional[str] = None


def register_kernel(name: str, *, kernel: Callable[..., Any], reference: Callable[..., Any],
                    make_inputs: Callable[[], tuple], rtol: float = 1e-4, atol: float = 1e-5,
                    backends: tuple[str, ...] = ("gpu",)) -> None:
    """Registers (or replaces) the self-check of kernel ``name``; see the module docstring.

    ``atol`` is relative to the largest magnitude of each reference leaf (gradients of
    different arguments have different scales): an element passes when
    ``|kernel - ref| <= atol * max(1, max|ref|) + rtol * |ref|``.
    """
    with _LOCK:
        _REGISTRY[name] = KernelCheck(name, kernel, reference, make_inputs, rtol, atol, tuple(backends))
        for key in [k for k in _VERDICTS if k[0] == name]:
            del _VERDICTS[key]


def set_mode(mode: Optional[str]) -> None:
    """Overrides ``MSVISION_KERNEL_SELFCHECK`` for this process (``None`` restores the variable)."""
    global _MODE_OVERRIDE
    if mode is not None and mode not in MODES:
        raise ValueError(f"kernel self-check mode must be one of {MODES}, got {mode!r}")
    _MODE_OVERRIDE = mode


def mode() -> str:
    value = _MODE_OVERRIDE if _MODE_OVERRIDE is not None else os.environ.get(ENV_VAR, "auto").strip().lower()
    if value not in MODES:
        raise ValueError(f"{ENV_VAR} must be one of {MODES}, got {value!r}")
    return value


def reset_verdicts() -> None:
    """Forgets every cached verdict (tests; after changing devices)."""
    with _LOCK:
        _VERDICTS.clear()


def verdicts() -> dict[tuple[str, str], Verdict]:
    """A copy of the cached verdicts, keyed by ``(kernel name, backend)``."""
    with _LOCK:
        return dict(_VERDICTS)


def _default_backend() -> str:
    # One indirection so tests can simulate a GPU host on the CPU.
    return jax.default_backend()


def kernel_enabled(name: str) -> bool:
    """Whether the dispatch may select kernel ``name`` (call it at trace time; cheap after the first call).

    False only when the mode is ``"off"`` or the kernel failed its check on the
    current default backend; the first call on a checked backend runs the check.
    """
    current_mode = mode()
    if current_mode == "off":
        return False
    if current_mode == "skip":
        return True
    spec = _REGISTRY[name]
    backend = _default_backend()
    if backend not in spec.backends:
        return True  # nothing to check here: lowering for another platform, or not a kernel backend
    return check_kernel(name, backend).ok


def check_kernel(name: str, backend: Optional[str] = None) -> Verdict:
    """The cached verdict of kernel ``name`` on ``backend`` (default: the default backend), running
    the check on first use. Warns (:class:`KernelFallbackWarning`) and logs when it fails."""
    backend = _default_backend() if backend is None else backend
    with _LOCK:
        key = (name, backend)
        if key not in _VERDICTS:
            verdict = _agree_across_processes(_run_check(_REGISTRY[name], backend))
            _VERDICTS[key] = verdict
            if verdict.ok:
                log.info("kernel %s passed its self-check on %s (%.2f s)", name, backend, verdict.seconds)
            else:
                message = (f"kernel {name!r} failed its self-check on {backend}; using its reference "
                           f"implementation instead. {verdict.reason} "
                           f"(set {ENV_VAR}=skip to use the kernel anyway)")
                log.warning("%s", message)
                warnings.warn(message, KernelFallbackWarning, stacklevel=3)
        return _VERDICTS[key]


def _run_check(spec: KernelCheck, backend: str) -> Verdict:
    start = time.perf_counter()
    try:
        # Usually called while an outer jit is tracing. JAX's trace state is per
        # thread, so a fresh thread runs the check eagerly (ensure_compile_time_eval
        # would not do: it breaks Pallas's interpret mode).
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kernel-selfcheck") as pool:
            reason = pool.submit(_evaluate, spec).result()
    except Exception as error:  # a kernel that does not compile or crashes must not take the process down
        first_line = (str(error).strip().splitlines() or [""])[0][:500]
        reason = f"it raised {type(error).__name__}: {first_line}"
        log.debug("kernel %s self-check error:\n%s", spec.name, "".join(traceback.format_exception(error)))
    return Verdict(spec.name, backend, reason is None, reason or "", time.perf_counter() - start)


def _agree_across_processes(verdict: Verdict) -> Verdict:
    """Multi-host: the kernel is used only if it passed on every process.

    Every process traces the same train step, so every process reaches its first
    check at the same point; without agreement, one host falling back would trace a
    different program from the others. (Not exercised on real hosts yet.)
    """
    if jax.process_count() == 1:
        return verdict
    from jax.experimental import multihost_utils

    passed = np.asarray(multihost_utils.process_allgather(np.asarray([verdict.ok], np.int32)))
    if verdict.ok and not passed.all():
        return dataclasses.replace(verdict, ok=False, reason="it failed on another process")
    return verdict


def _evaluate(spec: KernelCheck) -> Optional[str]:
    inputs = spec.make_inputs()
    expected = jax.device_get(jax.jit(spec.reference)(*inputs))
    actual = jax.device_get(jax.jit(spec.kernel)(*inputs))
    return _compare(expected, actual, spec.rtol, spec.atol)


def _compare(expected, actual, rtol: float, atol: float) -> Optional[str]:
    """None when every leaf agrees, else a description of the first disagreement."""
    expected_leaves, expected_tree = jax.tree.flatten(expected)
    actual_leaves, actual_tree = jax.tree.flatten(actual)
    if expected_tree != actual_tree:
        return f"outputs have structure {actual_tree}, expected {expected_tree}"
    for index, (e, a) in enumerate(zip(expected_leaves, actual_leaves)):
        e, a = np.asarray(e, np.float64), np.asarray(a, np.float64)
        if e.shape != a.shape:
            return f"output {index} has shape {a.shape}, expected {e.shape}"
        scale = max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0
        bad = ~(np.abs(a - e) <= atol * scale + rtol * np.abs(e))  # NaN counts as bad
        if np.any(bad):
            worst = float(np.nanmax(np.where(np.isfinite(a), np.abs(a - e), np.inf)))
            return (f"output {index} differs from the reference in {int(bad.sum())} of {e.size} elements "
                    f"(max abs difference {worst:.3g}, reference scale {scale:.3g})")
    return None
