"""One trainer per run directory: a lock file naming its holder.

    model_dir/train.lock   {"host": ..., "pid": ..., "started": ISO time, "argv": [...]}

Process 0 takes the lock before the run writes anything; a second trainer on
the same directory stops at once with a message naming the holder. A lock is
stale when its holder ran on this host and that pid is gone (a killed run):
it is then taken over. The lock file is created atomically: O_EXCL on a local
disk, a create-only upload (GCS `ifGenerationMatch=0`) on gs://, so of two
trainers started at the same moment exactly one gets it (`paths.create_exclusive`).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
from typing import Any

from etils import epath

from embed_jax import paths
from embed_jax.errors import UserError

LOCK_FILE = "train.lock"


class RunLockedError(UserError):
  """Another trainer holds the run directory."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Someone else's live process.
  return True


class RunLock:
  """The lock of `model_dir` (acquire / release; also a context manager)."""

  def __init__(self, model_dir: str | os.PathLike):
    self.path = epath.Path(model_dir) / LOCK_FILE
    self.held = False

  def holder(self) -> dict[str, Any] | None:
    """The current holder's record, or None when unlocked (an unreadable record counts as stale)."""
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      return {}

  def _is_stale(self, record: dict[str, Any]) -> bool:
    if not record:
      return True
    return record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", -1)))

  def _record(self) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": now,
                       "argv": sys.argv})

  def _create(self) -> bool:
    """Writes the lock if absent; False when it exists."""
    return paths.create_exclusive(self.path, self._record())

  def acquire(self) -> None:
    """Takes the lock (replacing a stale one); raises RunLockedError naming a live holder."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
      if self._create():
        self.held = True
        return
      record = self.holder()
      if record is None:
        continue  # Released meanwhile: try again.
      if not self._is_stale(record):
        raise RunLockedError(
            f"{self.path.parent} is in use by another trainer (host {record.get('host')}, pid "
            f"{record.get('pid')}, started {record.get('started')}); wait for it to finish or "
            f"stop it. If it is gone, delete {self.path}")
      try:
        self.path.unlink()
      except OSError as e:
        if e.errno != errno.ENOENT:
          raise
    raise RunLockedError(f"could not take the lock {self.path}: other trainers keep taking it")

  def release(self) -> None:
    if self.held:
      self.held = False
      try:
        self.path.unlink()
      except FileNotFoundError:
        pass

  def __enter__(self) -> RunLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
