"""The single-process side of the multi-process code, fast: when ``initialize_distributed``
starts ``jax.distributed`` and when it refuses, which images evaluation counts, and whether a
checkpoint's data state belongs to this process count. The real 2-process runs are
``tests/train/test_multiprocess.py`` (slow)."""

import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msvision import checkpoint as checkpoint_lib
from msvision.train import sharding as sharding_lib
from msvision.train.evaluate import _first_occurrences

LAUNCH_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
               "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_single_process_launches_do_not_initialize(clean_env):
    sharding_lib.initialize_distributed()
    # A SLURM allocation or mpirun with one task is a single-process run too.
    clean_env.setenv("SLURM_JOB_ID", "123")
    clean_env.setenv("SLURM_NTASKS", "1")
    clean_env.setenv("OMPI_COMM_WORLD_SIZE", "1")
    sharding_lib.initialize_distributed()
    assert not jax.distributed.is_initialized()
    assert jax.process_count() == 1


@pytest.mark.parametrize("missing", ["JAX_NUM_PROCESSES", "JAX_PROCESS_ID"])
def test_coordinator_without_the_other_variables_fails_before_connecting(clean_env, missing):
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")  # nothing listens: must not be dialled
    clean_env.setenv("JAX_NUM_PROCESSES", "2")
    clean_env.setenv("JAX_PROCESS_ID", "0")
    clean_env.delenv(missing)
    with pytest.raises(RuntimeError, match=missing):
        sharding_lib.initialize_distributed()
    assert not jax.distributed.is_initialized()


def test_first_occurrences_counts_each_image_once():
    seen = {7}
    # Two global batches: padding (-1), an id seen in an earlier batch (7), a repeat inside the batch (3).
    first = _first_occurrences(np.array([3, 7, -1, 3]), seen)
    second = _first_occurrences(np.array([[5, 3], [-1, -1]]), seen)
    np.testing.assert_array_equal(first, [3, -1, -1, -1])
    np.testing.assert_array_equal(second, [5, -1, -1, -1])
    assert seen == {3, 5, 7}


def test_data_state_is_restorable_only_by_the_process_count_that_wrote_it(tmp_path):
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"), every_steps=1, async_save=False)
    iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
    next(iterator), next(iterator)
    ckpt.save(2, dict(w=jnp.arange(3.0)), iterator, meta=dict(batch_size=4))
    ckpt.wait()
    assert ckpt.read_meta() == dict(batch_size=4, step=2, data_processes=1)
    assert ckpt.data_restorable()
    restored_iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
    step, state, _ = ckpt.restore(dict(w=jax.ShapeDtypeStruct((3,), jnp.float32)), restored_iterator)
    assert step == 2 and next(restored_iterator) == 2
    np.testing.assert_array_equal(state["w"], [0.0, 1.0, 2.0])

    # As if 2 processes had written it: this (single) process has no file of its own.
    data_dir = tmp_path / "checkpoints" / "2" / "data"
    os.rename(data_dir / "process_0-of-1.json", data_dir / "process_0-of-2.json")
    assert not ckpt.data_restorable()
    ckpt.close()
