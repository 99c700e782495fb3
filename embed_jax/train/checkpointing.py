"""Training checkpoints with orbax: the TrainState plus the data iterator's position.

    model_dir/checkpoints/<step>/state   the TrainState (params, optimizer, rng, counters)
    model_dir/checkpoints/<step>/data    the data iterator's JSON state

Saves are asynchronous (arrays are copied to host before `save` returns, so
the step may donate them right after); the last `keep` are kept. Restoring
takes a target with the current mesh's shardings, so a run can resume on a
different mesh shape. A checkpoint that fails to restore (e.g. a truncated
file) is reported and the previous one is tried. Every process calls these
methods (orbax writes collectively).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
CHECKPOINTS_DIR = "checkpoints"


class Checkpointer:
  """An orbax `CheckpointManager` for (TrainState, data state) pairs in `model_dir/checkpoints`."""

  def __init__(self, model_dir: str | Path, keep: int = 3, async_save: bool = True):
    self.directory = Path(model_dir).absolute() / CHECKPOINTS_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def all_steps(self) -> list[int]:
    """Steps of the finished checkpoints, ascending (saves in progress are not listed)."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Starts saving `state` and `data_state` as checkpoint `step` (returns once on host)."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self.manager.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """(step, state, data_state) of the newest checkpoint that restores; None if there is none.

    `abstract_state` holds ShapeDtypeStructs with the target shardings. A
    damaged checkpoint is logged with its error and skipped for the previous one.
    """
    for step in reversed(self.all_steps()):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except  # Any failure: try the previous one.
        log.warning("checkpoint %s/%d cannot be restored (%s: %s); trying the previous one",
                    self.directory, step, type(e).__name__, str(e).splitlines()[0][:300])
        print(f"WARNING: checkpoint {self.directory}/{step} is damaged "
              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); using the previous one",
              flush=True)
        self.manager.delete(step)
        continue
      return step, restored["state"], restored["data"]
    return None

  def close(self) -> None:
    self.wait()
    self.manager.close()
