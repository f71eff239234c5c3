"""Data parallelism with ``jax.sharding``: one mesh, batch on ``data``, the rest replicated.

The same code runs on one CPU, on N forced CPU devices
(``jax.config.update("jax_num_cpu_devices", N)`` before first use) and on GPU
hosts. Multi-host runs call :func:`initialize_distributed` first; every process
then feeds its own share of the global batch and
``jax.make_array_from_process_local_data`` assembles the global array.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize`` when launched as several processes.

    Must run before anything touches a JAX device (``train`` and
    ``restore_for_eval`` call it first). Detected from:

    - ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0) with
      ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (``python -m msvision.launch``
      sets all three);
    - a SLURM job step with more than one task (``srun``), or an Open MPI launch
      (``mpirun``): JAX reads the coordinator, process count and id, and the
      local devices from their environment.

    A plain single-process launch does nothing. On the CPU backend the processes
    talk through gloo over TCP (:func:`enable_cpu_collectives`).
    """
    if jax.distributed.is_initialized():
        return
    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if coordinator:
        missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if v not in os.environ]
        if missing:
            raise RuntimeError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} not: "
                               "set all three on every process (or use python -m msvision.launch)")
        kwargs = dict(coordinator_address=coordinator, num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    elif "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        kwargs = {}
    elif int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        kwargs = {}
    else:
        return
    enable_cpu_collectives()
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed initialised: process %d of %d, %d of %d devices local",
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def enable_cpu_collectives() -> None:
    """Cross-process collectives for the CPU backend (gloo over TCP), before it starts.

    ``jax_cpu_collectives_implementation`` chooses them (jax >= 0.4.27; the older
    ``jax_cpu_enable_gloo_collectives`` was removed in 0.8.0) and defaults to ``"gloo"`` since
    jax 0.5.1 — still so in 0.10.2 and 0.11.1. Without it a multi-process CPU run
    fails at its first cross-process collective, so an unset (``None``) value is
    set to gloo; a choice made in ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` (e.g.
    ``mpi``) is kept. The option only concerns the CPU client: GPU and TPU runs
    are unaffected.
    """
    if os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        return
    current = getattr(jax.config, "jax_cpu_collectives_implementation", "absent")
    if current is None:  # "absent": a JAX without the option, nothing to set
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over all devices of all processes, axis ``data``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Returns the per-process batch size; raises if the batch does not divide."""
    num_devices = mesh.devices.size
    if global_batch_size % num_devices:
        raise ValueError(
            f"global batch size {global_batch_size} must be a multiple of the number of "
            f"devices ({num_devices}); set --config.data.batch_size to a multiple of {num_devices}"
        )
    return global_batch_size // jax.process_count()


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Turns this process's numpy share of a batch into global ``jax.Array``s.

    Every leaf's leading axis is this process's slice of the global batch.
    """
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def gather_to_host(tree: Any) -> Any:
    """Fully gathers (possibly multi-host) sharded arrays to numpy on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
