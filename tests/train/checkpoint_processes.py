"""Run as several processes (``python -m msvision.launch``): the work-directory lock and the
checkpoint choice of a multi-process run (``tests/train/test_checkpoint_verify.py``).

``python checkpoint_processes.py WORKDIR save|resume|hold``:
- save: takes the lock, saves checkpoints 1 and 2 of a replicated state, releases it;
- resume: takes the lock, picks the newest intact checkpoint, restores it, prints ``resumed <step> <skipped>``;
- hold: takes the lock and prints ``holding`` on process 0, then waits (at most 120 s) for the
  file ``WORKDIR/stop``.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from msvision import checkpoint as checkpoint_lib
from msvision.train import loop, sharding, workdir_lock


def main(workdir: str, mode: str) -> None:
    sharding.initialize_distributed()
    lock = workdir_lock.acquire_for_run(workdir)
    mesh = sharding.make_mesh()
    replicated = sharding.replicated(mesh)
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1)
    if mode == "save":
        for step in (1, 2):
            state = jax.jit(lambda s=step: {"w": jnp.full((64, 64), float(s)), "mu": jnp.full((32,), -float(s))},
                            out_shardings=replicated)()
            ckpt.save(step, state)
    elif mode == "resume":
        step = loop.select_resume_step(ckpt)
        abstract = {"w": jax.ShapeDtypeStruct((64, 64), jnp.float32, sharding=replicated),
                    "mu": jax.ShapeDtypeStruct((32,), jnp.float32, sharding=replicated)}
        step, state, _ = ckpt.restore(abstract, step=step)
        assert float(np.asarray(state["w"].addressable_data(0))[0, 0]) == step
        print(f"resumed {step} {[s.step for s in ckpt.skipped]}", flush=True)
    else:
        if lock is not None:
            print("holding", flush=True)
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(workdir, "stop")) and time.time() < deadline:
            time.sleep(0.1)
    ckpt.close()
    if lock is not None:
        lock.release()


if __name__ == "__main__":
    main(*sys.argv[1:])
