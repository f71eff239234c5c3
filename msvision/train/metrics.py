"""Metrics to JSON lines and TensorBoard event files, progress on the console.

Only process 0 writes. ``WORKDIR/metrics.jsonl`` gets one JSON object per logged
step (``{"step": 100, "train/loss": 0.8, ...}``); TensorBoard events go to
``WORKDIR/tensorboard/``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping, Optional

import jax
from tqdm.auto import tqdm


def _summary_writer_class():
    """``tensorboardX.SummaryWriter``, imported without torch where torch is installed.

    tensorboardX imports torch (when present) only to accept torch tensors; that import
    took 2.5 s of every ``train.py`` start here, and we log Python floats. So torch is
    masked during the import unless something imported it already, and unmasked after.
    """
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError: tensorboardX's fallback
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(step=int(step), **clean), allow_nan=True) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                if math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All rows of ``WORKDIR/metrics.jsonl`` (a restarted run may repeat steps)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A console progress bar with loss, step time, images/s and ETA."""

    def __init__(self, total_steps: int, start_step: int, global_batch_size: int, *, desc: str = "train"):
        self.batch = global_batch_size
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc=desc,
            dynamic_ncols=True,
            disable=jax.process_index() != 0,
            file=sys.stdout,
            mininterval=1.0,
        )
        self._last_time: Optional[float] = None
        self._last_step = start_step

    def update(self, step: int, metrics: Optional[Mapping[str, float]] = None) -> dict[str, float]:
        """Advances to ``step``.

        Steps are dispatched asynchronously, so time is only measured at calls with
        ``metrics`` (fetching them waits for the device): the returned step time and
        images/s average over the steps since the previous such call.
        """
        if metrics is None:
            self.bar.update(step - self.bar.n)
            return {}
        now = time.perf_counter()
        timing = {}
        if self._last_time is not None and step > self._last_step:
            step_time = (now - self._last_time) / (step - self._last_step)
            timing = {"perf/step_time_s": step_time, "perf/images_per_s": self.batch / step_time}
        self.bar.update(step - self.bar.n)
        postfix = {}
        if "train/loss" in metrics:
            postfix["loss"] = f"{metrics['train/loss']:.4f}"
        if timing:
            postfix["s/step"] = f"{timing['perf/step_time_s']:.3f}"
            postfix["img/s"] = f"{timing['perf/images_per_s']:.1f}"
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self._last_time, self._last_step = now, step
        return timing

    def reset_timer(self, step: int) -> None:
        """Restarts step timing (after compilation, evaluation or checkpointing)."""
        self._last_time, self._last_step = time.perf_counter(), step

    def close(self) -> None:
        self.bar.close()
