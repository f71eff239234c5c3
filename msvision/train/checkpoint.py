"""orbax checkpoints of the train state together with the grain iterator state.

A checkpoint directory ``WORKDIR/checkpoints/<step>/`` holds three items:
``state`` (params, frozen variables, optimizer state, step, RNG key as arrays),
``data`` (the grain iterator state, so a resumed run reads exactly the batches an
uninterrupted run would) and ``meta`` (JSON: step, number of steps, global batch size and
``data_processes``, the number of processes whose iterator states ``data`` holds).
orbax writes each checkpoint to a temporary directory and renames it when
complete, so a crash mid-save leaves the previous checkpoint as the latest.

Several processes save collectively: every process calls :meth:`Checkpointer.save`
with the same step; the replicated ``state`` is written once (orbax splits the
writing among the processes), ``meta`` by process 0, and ``data`` holds one file per
process (``process_<i>-of-<n>.json``, grain's handler), so the grain state can only
be restored by the same number of processes — :meth:`Checkpointer.data_restorable`
says whether it can; the train loop otherwise repositions the data stream from the
step (``msvision.data.pipeline``: batch ``k`` does not depend on the process count).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import grain
import grain.checkpoint  # noqa: F401  (registers the grain handler with orbax)
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every ``every_steps`` steps and on demand; keeps the last ``keep``."""

    def __init__(self, directory: str, *, every_steps: int, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data", "meta"),
        )

    @property
    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: Any, data_iterator: Any = None, meta: Optional[dict] = None) -> None:
        meta = dict(meta or {}, step=step)
        if data_iterator is not None:
            meta["data_processes"] = jax.process_count()
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(
        self, abstract_state: Any, data_iterator: Any = None, step: Optional[int] = None
    ) -> tuple[int, Any, dict]:
        """Restores ``step`` (default: latest) into the structure and shardings of ``abstract_state``.

        ``data_iterator`` (if given) is set to the saved iterator state in place.
        Returns ``(step, state, meta)``.
        """
        step = self.latest_step if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        logging.info("restored checkpoint %d from %s", step, self.directory)
        return step, restored["state"], dict(restored["meta"] or {})

    def read_meta(self, step: Optional[int] = None) -> dict:
        """The ``meta`` item of ``step`` (default: latest) alone."""
        step = self.latest_step if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"] or {})

    def data_restorable(self, step: Optional[int] = None) -> bool:
        """Whether this process can restore the grain iterator state of ``step`` (default:
        latest): the checkpoint holds this process's file of it, i.e. it was written by
        as many processes as there are now (grain's handler names the files
        ``process_<i>-of-<n>.json``; a grain that renamed them would make this False, and
        the loop then repositions the data stream from the step, which is also exact)."""
        step = self.latest_step if step is None else step
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        return os.path.exists(os.path.join(self.directory, str(step), "data", name))

    def restore_subtree(self, abstract_subtree: Any, step: Optional[int] = None) -> tuple[int, Any]:
        """Restores only the top-level entries of the saved state named in ``abstract_subtree``.

        E.g. ``{"params": ..., "rest": ...}`` for inference, leaving the optimizer
        state on disk. Returns ``(step, subtree)``.
        """
        step = self.latest_step if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        # PyTreeRestore reads the StandardSave format; partial_restore skips the entries not asked for.
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=abstract_subtree,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_subtree),
            partial_restore=True,
        ))
        restored = self.manager.restore(step, args=args)
        logging.info("restored %s of checkpoint %d from %s", sorted(abstract_subtree), step, self.directory)
        return step, restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct``s (with shardings) of a tree of arrays, for restoring."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )

