"""Batches prepared ahead in a background thread, so host work never stalls the device.

The trainer's step n is dispatched asynchronously; while it computes, this
thread reads, tokenises and packs batch n+1 and places it on the devices with
its sharding (`GlobalBatchIterator.__next__` does all of that). Each item
comes with the iterator's state taken right after it, so a checkpoint records
the position of exactly the batches consumed.

An exception in the thread (a bad data file, say) is raised by the `next`
call that would have returned that batch, with its original traceback.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

_DONE = object()


class Prefetcher:
  """Iterates (batch, state after it) of `iterator`, `depth` batches ahead (0: no thread).

  `iterator` must have `__next__` and `get_state()`; only this object calls
  them once it exists. Call `close()` (or use it as a context manager) to stop
  the thread.
  """

  def __init__(self, iterator: Any, depth: int = 2):
    self.iterator = iterator
    self.depth = depth
    self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    self._stop = threading.Event()
    self._thread = None
    if depth > 0:
      self._thread = threading.Thread(target=self._fill, name="embed_jax-prefetch", daemon=True)
      self._thread.start()

  def _produce(self) -> tuple[Any, dict]:
    batch = next(self.iterator)
    return batch, self.iterator.get_state()

  def _fill(self) -> None:
    while not self._stop.is_set():
      try:
        item = self._produce()
      except StopIteration:
        item = _DONE
      except BaseException as e:  # pylint: disable=broad-except  # Re-raised in the consumer.
        item = e
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item is _DONE or isinstance(item, BaseException):
        return

  def __iter__(self) -> Iterator[tuple[Any, dict]]:
    return self

  def __next__(self) -> tuple[Any, dict]:
    if self._thread is None:
      return self._produce()
    item = self._queue.get()
    if item is _DONE:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    """Stops the thread (a batch being prepared is finished and dropped)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=60)
      self._thread = None

  def __enter__(self) -> Prefetcher:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
