"""Training checkpoints with orbax: the TrainState plus the run's JSON record, never lost.

    model_dir/checkpoints/<step>/state   the TrainState (params, optimizer, rng, counters)
    model_dir/checkpoints/<step>/data    JSON: the data iterator's position, the run's explicit
                                         gin bindings and the data files' fingerprint

Saves are asynchronous (arrays are copied to host before `save` returns, so
the step may donate them right after); the last `keep` are kept. A finished
save that failed is raised by `check_for_errors` (the trainer calls it every
step), and a save that the disk cannot hold is refused before it starts.

Restoring never deletes anything. The newest checkpoint is tried first:
  * incompatible (its tree's structure, shapes or dtypes differ from this
    run's state, e.g. the model config changed): `IncompatibleCheckpointError`,
    nothing touched;
  * damaged (unreadable content: truncated, missing or undecodable files):
    moved aside to `checkpoints/<step>.damaged-<time>` (in a bucket, where
    nothing renames atomically, a copy then a delete), reported, and the
    previous one is tried; when every one is damaged, `AllDamagedError`
    (unless the run is told to start over);
  * transient (an I/O error that may pass) or anything unrecognised: retried
    a few times, then `CheckpointReadError`, nothing touched.
Restoring takes a target with the current mesh's shardings, so a run can
resume on another mesh shape. Every process calls these methods (orbax
writes collectively).
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from embed_jax.errors import UserError

log = logging.getLogger(__name__)
CHECKPOINTS_DIR = "checkpoints"
RESTORE_ATTEMPTS = 3
TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                    errno.ECONNREFUSED, errno.ECONNABORTED, errno.ENETUNREACH,
                    errno.EHOSTUNREACH, errno.EBUSY, errno.EINTR}
# Status codes tensorstore puts in its messages.
TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED")
DAMAGED_CODES = ("DATA_LOSS", "NOT_FOUND", "OUT_OF_RANGE")
DAMAGE_WORDS = ("corrupt", "truncat", "unexpected end", "error reading", "error opening",
                "checksum", "invalid header", "not a valid")
INCOMPATIBLE_WORDS = "is not compatible with the stored shape"


class CheckpointError(UserError):
  """A checkpoint problem that stops the run before it trains (the message says what to do)."""


class IncompatibleCheckpointError(CheckpointError):
  """The checkpoint's tree does not match this run's state (a model-shaping config change)."""


class AllDamagedError(CheckpointError):
  """Every checkpoint of the run is damaged (they were moved aside, none deleted)."""


class CheckpointReadError(CheckpointError):
  """A checkpoint could not be read for a reason that is not damage (I/O, permissions, memory)."""


class CheckpointSaveError(RuntimeError):
  """A save failed or cannot fit on the disk; the last good checkpoint is intact."""


def tree_signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """'path/to/leaf' -> (shape, dtype) of every array leaf (TrainState or orbax metadata)."""
  def name(entry) -> str:
    for attr in ("key", "idx", "name"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {"/".join(name(e) for e in path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in leaves if hasattr(leaf, "shape")}


def first_differences(stored: dict, expected: dict, most: int = 3) -> list[str]:
  """Lines naming up to `most` leaves whose presence, shape or dtype differ."""
  lines = []
  for key in sorted(set(stored) | set(expected)):
    a, b = stored.get(key), expected.get(key)
    if a == b:
      continue
    if a is None:
      lines.append(f"{key}: not in the checkpoint (this run has {b[0]} {b[1]})")
    elif b is None:
      lines.append(f"{key}: in the checkpoint ({a[0]} {a[1]}) but not in this run")
    else:
      lines.append(f"{key}: checkpoint {a[0]} {a[1]}, this run {b[0]} {b[1]}")
    if len(lines) == most:
      break
  return lines


def _chain(error: BaseException) -> list[BaseException]:
  """The error and the ones it was raised from (orbax wraps tensorstore's)."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def classify_read_error(error: BaseException) -> str:
  """'incompatible', 'damaged', 'transient' or 'other' for an error raised reading a checkpoint."""
  chain = _chain(error)
  text = " ".join(str(e) for e in chain)
  if INCOMPATIBLE_WORDS in text:
    return "incompatible"
  if any(isinstance(e, (PermissionError, MemoryError)) for e in chain) or (
      "RESOURCE_EXHAUSTED" in text or "PERMISSION_DENIED" in text):
    return "other"
  if any(isinstance(e, (TimeoutError, ConnectionError)) or (
      isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS) for e in chain):
    return "transient"
  if any(code in text for code in TRANSIENT_CODES):
    return "transient"
  if any(isinstance(e, (FileNotFoundError, json.JSONDecodeError, KeyError, EOFError))
         for e in chain):
    return "damaged"
  if any(code in text for code in DAMAGED_CODES) or any(w in text.lower() for w in DAMAGE_WORDS):
    return "damaged"
  return "other"


def _first_line(error: BaseException, width: int = 240) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {(text[0] if text else '')[:width]}"


class Checkpointer:
  """An orbax `CheckpointManager` for (TrainState, run record) pairs in `model_dir/checkpoints`."""

  def __init__(self, model_dir: epath.PathLike, keep: int = 3, async_save: bool = True,
               retry_seconds: float = 1.0):
    path = epath.Path(model_dir)
    if "://" not in str(path):
      path = path.absolute()
    self.directory = path / CHECKPOINTS_DIR
    self.retry_seconds = retry_seconds
    self._pending = None  # The step of a save started and not yet seen to finish.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    # The handlers are named so that a fresh manager can read a checkpoint's metadata.
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})

  def all_steps(self) -> list[int]:
    """Steps of the finished checkpoints, ascending (saves in progress are not listed)."""
    return sorted(self.manager.all_steps())

  # ---- saving ----

  def _size(self, step: int) -> int:
    """Bytes of checkpoint `step` (a local folder)."""
    total = 0
    for root, _, files in os.walk(os.fspath(self.directory / str(step))):
      total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total

  def check_space(self) -> None:
    """Raises CheckpointSaveError when the disk cannot hold another checkpoint like the last one.

    Only local disks are checked (object stores have no fixed size).
    """
    steps = self.all_steps()
    if not steps or "://" in str(self.directory):
      return
    need = self._size(steps[-1]) * 1.1
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise CheckpointSaveError(
          f"not enough disk space for a checkpoint in {self.directory}: {free / 2**20:.1f} MiB "
          f"free, the last one took {need / 1.1 / 2**20:.1f} MiB; the last good checkpoint is "
          f"{self.directory}/{steps[-1]}")

  def save(self, step: int, state: Any, record: dict) -> None:
    """Starts saving `state` and the JSON `record` as checkpoint `step` (returns once on host)."""
    if step in self.manager.all_steps():
      return
    self.wait()  # orbax waits for the previous save anyway; this names its failure.
    self.check_space()
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(record)), force=True)
    except Exception as e:  # pylint: disable=broad-except  # A synchronous part failed.
      raise self._save_error(e) from e
    self._pending = step

  def _save_error(self, error: BaseException) -> CheckpointSaveError:
    good = [s for s in self.all_steps() if s != self._pending]
    self._pending = None
    return CheckpointSaveError(
        f"saving a checkpoint to {self.directory} failed ({_first_line(_chain(error)[-1])}); the "
        f"last good checkpoint is {self.directory}/{good[-1] if good else '(none)'}")

  def check_for_errors(self) -> None:
    """Raises CheckpointSaveError once a started save has failed (cheap; call every step).

    A save still in progress is not waited for.
    """
    if self._pending is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until every started save is on disk; raises CheckpointSaveError if one failed."""
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except  # Any failure of the save thread.
      raise self._save_error(e) from e
    self._pending = None

  # ---- restoring ----

  def _check_compatible(self, step: int, abstract_state: Any) -> None:
    metadata = self.manager.item_metadata(step)["state"]
    tree = getattr(metadata, "tree", metadata)
    if tree is None:
      return  # No metadata to compare (the restore itself will tell).
    stored, expected = tree_signature(tree), tree_signature(abstract_state)
    if stored != expected:
      raise IncompatibleCheckpointError(
          f"checkpoint {self.directory}/{step} does not fit this run's state: "
          + "; ".join(first_differences(stored, expected)))

  def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def _move_aside(self, step: int) -> epath.Path:
    """Renames a damaged checkpoint out of orbax's sight (process 0); returns the new path."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = self.directory / f"{step}.damaged-{stamp}"
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(target)
    from embed_jax import partitioning  # pylint: disable=import-outside-toplevel
    partitioning.barrier(f"embed_jax_move_aside_{step}")
    self.manager.reload()
    return target

  def latest_record(self) -> dict | None:
    """The JSON record of the newest checkpoint, or None (none, or unreadable: restore will tell)."""
    steps = self.all_steps()
    if not steps:
      return None
    try:
      return self.manager.restore(steps[-1], args=ocp.args.Composite(
          data=ocp.args.JsonRestore()))["data"]
    except Exception:  # pylint: disable=broad-except  # restore_latest classifies the failure.
      return None

  def restore_latest(self, abstract_state: Any, *, start_over: bool = False
                     ) -> tuple[int, Any, dict] | None:
    """(step, state, record) of the newest checkpoint that restores; None if there is none.

    `abstract_state` holds ShapeDtypeStructs with the target shardings. See the
    module docstring for what happens to incompatible, damaged and unreadable
    checkpoints. `start_over`: when every checkpoint is damaged, return None
    (start from scratch) instead of raising AllDamagedError.
    """
    moved = []
    for step in reversed(self.all_steps()):
      for attempt in range(RESTORE_ATTEMPTS):
        try:
          self._check_compatible(step, abstract_state)
          state, record = self._restore_step(step, abstract_state)
          return step, state, record
        except IncompatibleCheckpointError:
          raise
        except Exception as e:  # pylint: disable=broad-except  # Classified below.
          kind = classify_read_error(e)
          if kind == "incompatible":
            raise IncompatibleCheckpointError(
                f"checkpoint {self.directory}/{step} does not fit this run's state: "
                f"{_first_line(_chain(e)[-1])}") from e
          if kind == "damaged":
            target = self._move_aside(step)
            moved.append(str(target))
            print(f"WARNING: checkpoint {self.directory}/{step} is damaged ({_first_line(e)}); "
                  f"moved it to {target} and using the previous one", flush=True)
            break
          if kind == "transient" and attempt + 1 < RESTORE_ATTEMPTS:
            log.warning("reading checkpoint %s/%d failed (%s); retrying", self.directory, step,
                        _first_line(e))
            time.sleep(self.retry_seconds * 2**attempt)
            continue
          raise CheckpointReadError(
              f"cannot read checkpoint {self.directory}/{step} ({_first_line(e)}); nothing was "
              "changed: fix the cause and run the same command again") from e
    if moved and not start_over:
      raise AllDamagedError(
          f"every checkpoint of this run is damaged; they were moved aside ({', '.join(moved)}). "
          "To start the run over from step 0, pass --gin.train.start_over=True")
    return None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
