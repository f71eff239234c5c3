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

Verification. When a save is final (orbax has renamed it into place: after
``wait_until_finished``, in a background thread for async saves), process 0 hashes
every file of ``<step>/`` and writes ``<step>/checksums.json`` (path, size and SHA-256
of each file; written to a temporary name and renamed, so it is either whole or
absent). A checkpoint counts as complete only with that file, and every restore
(training, evaluation, prediction, export) first checks every listed file: a
checkpoint with a changed, truncated or missing file, or without ``checksums.json``
(a save still being written, or cut short), is never used; restore falls back to
the newest intact one, logs which step it skipped and why, and records it in
:attr:`Checkpointer.skipped` (the train loop logs their number as
``checkpoint/skipped``). With none intact, :class:`NoCheckpointError` names the
directory and every reason — except when training resumes and every checkpoint is
only a save that never finished (a run killed during its first save): then there is
nothing complete to lose, and training starts from step 0 (``loop.select_resume_step``). Readers (``eval.py``, ``predict``) can therefore run while
training writes: a checkpoint is theirs only once its checksums are written.

When training resumes from an older step because newer ones failed, those are moved
to ``checkpoints/skipped/<step>-<time>/`` (kept for inspection; orbax could not save
that step again otherwise).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Optional

import grain
import grain.checkpoint  # noqa: F401  (registers the grain handler with orbax)
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

MANIFEST = "checksums.json"  # in each <step>/ folder
SKIPPED_DIR = "skipped"  # in the checkpoint directory: checkpoints training moved out of the way


@dataclasses.dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint restore passed over: its step, why, and whether it is only a save that
    never finished (no ``checksums.json``; a run stopped mid-save) rather than damaged."""

    step: int
    reason: str
    unfinished: bool = False


class NoCheckpointError(FileNotFoundError):
    """No (intact) checkpoint to restore; the message names the directory and why
    (``skipped``: the checkpoints that were there but could not be used)."""

    def __init__(self, message: str, skipped: tuple[SkippedCheckpoint, ...] = ()):
        super().__init__(message)
        self.skipped = tuple(skipped)


def checkpoint_steps(directory: str) -> list[int]:
    """The step folders of ``directory`` (orbax's finished checkpoints), ascending."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(step_dir: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != MANIFEST and not name.startswith(MANIFEST + "."):
                out.append(rel)
    return out


def write_manifest(step_dir: str) -> dict:
    """Hashes every file of a finished checkpoint folder into ``step_dir/checksums.json``."""
    files = {rel: {"size": os.path.getsize(os.path.join(step_dir, rel)), "sha256": _sha256(os.path.join(step_dir, rel))}
             for rel in _files(step_dir)}
    manifest = {"format": 1, "files": files}
    tmp = os.path.join(step_dir, f"{MANIFEST}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, MANIFEST))  # whole or absent
    return manifest


def verify_checkpoint(directory: str, step: int) -> Optional[str]:
    """Checks ``directory/<step>/`` against its ``checksums.json``.

    Returns None when intact, else why it must not be used.
    """
    step_dir = os.path.join(directory, str(step))
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.isdir(step_dir):
        return "the folder is gone"
    if not os.path.exists(path):
        return (f"no {MANIFEST}: the save never finished (still being written, or the run stopped "
                "before it was complete)")
    try:
        with open(path) as f:
            files = json.load(f)["files"]
        files = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    for rel, (size, sha) in sorted(files.items()):
        full = os.path.join(step_dir, rel)
        if not os.path.isfile(full):
            return f"file {rel} is missing"
        actual = os.path.getsize(full)
        if actual != size:
            what = "truncated" if actual < size else "longer than saved"
            return f"file {rel} is {what} ({actual} bytes, {size} when saved)"
        if _sha256(full) != sha:
            return f"file {rel} does not match its checksum (its bytes changed after the save)"
    return None


def select_checkpoint(directory: str, step: Optional[int] = None) -> tuple[int, list[SkippedCheckpoint]]:
    """The newest intact checkpoint step of ``directory`` (or ``step``, which must be
    intact) and the newer ones passed over, each logged as a warning.

    Raises:
      NoCheckpointError: no checkpoint, ``step`` absent or not intact, or none intact.
    """
    directory = os.path.abspath(directory)
    steps = checkpoint_steps(directory)
    if step is not None:
        if step not in steps:
            raise NoCheckpointError(f"no checkpoint of step {step} in {directory}; available steps: {steps}")
        reason = verify_checkpoint(directory, step)
        if reason:
            raise NoCheckpointError(f"checkpoint {step} in {directory} cannot be used: {reason}")
        return step, []
    skipped = []
    for candidate in reversed(steps):
        reason = verify_checkpoint(directory, candidate)
        if reason is None:
            return candidate, skipped
        log.warning("skipping checkpoint %d in %s: %s", candidate, directory, reason)
        unfinished = not os.path.exists(os.path.join(directory, str(candidate), MANIFEST)) and os.path.isdir(
            os.path.join(directory, str(candidate)))
        skipped.append(SkippedCheckpoint(candidate, reason, unfinished))
    if not steps:
        what = "no such directory" if not os.path.isdir(directory) else "no step folders"
        raise NoCheckpointError(f"no checkpoint in {directory} ({what})")
    raise NoCheckpointError(f"no intact checkpoint in {directory}: "
                            + "; ".join(f"step {s.step}: {s.reason}" for s in skipped), skipped)


def find_checkpoint_step(workdir: str, step: Optional[int] = None) -> int:
    """The checkpoint step to restore from ``workdir``: the newest intact one (checked against
    its checksums; newer ones that fail are logged and skipped) or ``step``, which must be
    intact. Checked before anything is built.

    Raises:
      NoCheckpointError: no checkpoint, none intact, or ``step`` absent or not intact.
    """
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not checkpoint_steps(directory):
        what = "no such directory" if not os.path.isdir(directory) else "no step folders (orbax checkpoints)"
        raise NoCheckpointError(
            f"no checkpoint to restore in {os.path.abspath(workdir)}: looked for orbax checkpoints in {directory} "
            f"and found {what}. Train first (python train.py --config=... --workdir={workdir}) or point "
            "--workdir at a training run."
        )
    return select_checkpoint(directory, step)[0]


class Checkpointer:
    """Saves every ``every_steps`` steps and on demand; keeps the last ``keep``; verifies on restore."""

    def __init__(self, directory: str, *, every_steps: int, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.every_steps = every_steps
        self.skipped: list[SkippedCheckpoint] = []  # checkpoints restore passed over, oldest call first
        self._manifest_thread: Optional[threading.Thread] = None
        self._manifest_error: Optional[BaseException] = None
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
        """The newest step folder, intact or not (see :meth:`latest_intact_step`)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: Any, data_iterator: Any = None, meta: Optional[dict] = None) -> None:
        self._finish_manifest()
        meta = dict(meta or {}, step=step)
        if data_iterator is not None:
            meta["data_processes"] = jax.process_count()
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        if jax.process_index() == 0:
            # The checksums are of the final files: written once orbax has finished
            # (a background thread, so async saves stay async).
            self._manifest_thread = threading.Thread(target=self._write_manifest, args=(step,),
                                                     name=f"checksums-{step}", daemon=True)
            self._manifest_thread.start()

    def _write_manifest(self, step: int) -> None:
        try:
            self.manager.wait_until_finished()
            step_dir = os.path.join(self.directory, str(step))
            if os.path.isdir(step_dir):
                write_manifest(step_dir)
        except BaseException as e:  # surfaced by the next save or close
            self._manifest_error = e

    def _finish_manifest(self) -> None:
        if self._manifest_thread is not None:
            self._manifest_thread.join()
            self._manifest_thread = None
        if self._manifest_error is not None:
            error, self._manifest_error = self._manifest_error, None
            raise error

    def _skip(self, step: int, reason: str) -> None:
        log.warning("skipping checkpoint %d in %s: %s", step, self.directory, reason)
        self.skipped.append(SkippedCheckpoint(step, reason))

    def _restore_step(self, step: Optional[int], restore: Any) -> tuple[int, Any]:
        """``(s, restore(s))`` for ``s`` the newest intact checkpoint, or ``step`` (which must be
        intact)."""
        self._finish_manifest()
        if step is not None:
            select_checkpoint(self.directory, step)
            self._know(step)
            return step, restore(step)
        chosen = None
        for candidate in reversed(checkpoint_steps(self.directory)):
            reason = verify_checkpoint(self.directory, candidate)
            if reason is None:
                chosen = candidate
                break
            self._skip(candidate, reason)
        if chosen is None:
            if not self.skipped:
                raise NoCheckpointError(f"no checkpoint in {self.directory}")
            raise NoCheckpointError(f"no intact checkpoint in {self.directory}: " + "; ".join(
                f"step {s.step}: {s.reason}" for s in self.skipped))
        self._know(chosen)
        return chosen, restore(chosen)

    def _know(self, step: int) -> None:
        if step not in self.manager.all_steps():
            self.manager.reload()  # written by another process since this manager was made

    def restore(
        self, abstract_state: Any, data_iterator: Any = None, step: Optional[int] = None
    ) -> tuple[int, Any, dict]:
        """Restores ``step`` (default: the newest intact one) into the structure and shardings
        of ``abstract_state``, after checking its files against their checksums.

        ``data_iterator`` (if given) is set to the saved iterator state in place.
        Returns ``(step, state, meta)``.

        Raises:
          NoCheckpointError: no intact checkpoint (or ``step`` is absent or not intact).
        """
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        step, restored = self._restore_step(step, lambda s: self.manager.restore(s, args=ocp.args.Composite(**items)))
        logging.info("restored checkpoint %d from %s", step, self.directory)
        return step, restored["state"], dict(restored["meta"] or {})

    def read_meta(self, step: Optional[int] = None) -> dict:
        """The ``meta`` item of ``step`` (default: latest) alone."""
        step = self.latest_step if step is None else step
        self._know(step)
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"] or {})

    def latest_intact_step(self) -> Optional[int]:
        """The newest checkpoint that passes verification now (after pending saves finish), or None."""
        self.wait()
        try:
            return select_checkpoint(self.directory)[0]
        except NoCheckpointError:
            return None

    def set_aside(self, steps: list[int]) -> None:
        """Moves checkpoints ``steps`` to ``skipped/<step>-<time>/`` (process 0) so that
        training can save those steps again; the manager forgets them."""
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                target = os.path.join(self.directory, SKIPPED_DIR, f"{step}-{stamp}")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(os.path.join(self.directory, str(step)), target)
                log.warning("moved checkpoint %d to %s", step, target)
        _sync_processes("msvision_checkpoint_set_aside")
        self.manager.reload()

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
        state on disk (the whole checkpoint is verified all the same: orbax packs all
        arrays into shared files). Returns ``(step, subtree)``.
        """
        # PyTreeRestore reads the StandardSave format; partial_restore skips the entries not asked for.
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=abstract_subtree,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_subtree),
            partial_restore=True,
        ))
        step, restored = self._restore_step(step, lambda s: self.manager.restore(s, args=args))
        logging.info("restored %s of checkpoint %d from %s", sorted(abstract_subtree), step, self.directory)
        return step, restored["state"]

    def state_metadata(self, step: int) -> Any:
        """The saved ``state`` item's tree with ``shape`` / ``dtype`` metadata leaves (nothing read)."""
        return ocp.StandardCheckpointer().metadata(os.path.join(self.directory, str(step), "state")).item_metadata

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self._finish_manifest()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self._finish_manifest()
        self.manager.close()


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def path_name(path) -> str:
    """``'head/heads/0/cls/kernel/value'``: a pytree key path as one string, the same for an
    ``nnx.State`` and for the checkpoint's metadata tree of it."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct``s (with shardings) of a tree of arrays, for restoring."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )

