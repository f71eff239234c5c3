"""Timing helper shared by the benchmark scripts (run as ``python benchmarks/<script>.py``,
which puts this folder on ``sys.path``)."""

import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one warm-up call (compilation for JAX)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
