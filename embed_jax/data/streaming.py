"""Host-local batches read as streams: corpora larger than memory, resumable exactly.

    DataConfig.streaming = True      # pipeline.global_batch_iterator then builds this

`PairBatchIterator` tokenises a process's whole share into memory; this
iterator instead keeps one tf.data stream per (task, local shard): the task's
source read lazily (document files, streaming pair files, tfds shards: each
process opens only its own files where there are enough), tokenised and
converted on the fly, shuffled within a buffer of `shuffle_buffer` examples
seeded by (seed, task, shard, epoch), and repeated epoch after epoch.

Which task fills each row is the mixture's draw of `order.task_choices` (with
`same_source_batches` too), so the rows of a global batch do not depend on the
number of processes. The state is `order.ShardedOrder`'s format: the step and,
per task and shard, how many examples its stream has given; every process
counts all shards, so any process's state restores every other. A restore
re-reads each local stream up to its position (the cost of the examples
already seen in the current epoch, once; the first epoch's length is learnt
on the way when the position lies beyond it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import seqio
import tensorflow as tf

from embed_jax.data import batch_format, order as order_lib
from embed_jax.errors import ConfigError

log = logging.getLogger(__name__)

_READ_BATCH = 256
_TRUNCATED = {"x_truncated": "x", "y_truncated": "y", "neg_truncated": "negatives"}


class _Stream:
  """The endless, epoch-repeating, converted examples of one (task, shard).

  One tf.data iterator runs over all epochs from the one it was opened at
  (`range(epoch, ...).flat_map(shuffled epoch)`), each example tagged with its
  epoch, so an epoch boundary costs nothing and Python still sees it.
  """

  def __init__(self, task: seqio.Task, config, shard: int, num_shards: int, shuffle_buffer: int):
    self.task, self.config, self.shard, self.num_shards = task, config, shard, num_shards
    self.shuffle_buffer = shuffle_buffer
    self.epoch, self.offset, self.epoch_size = 0, 0, None
    self.truncated = {"x": 0, "y": 0}
    if config.num_negatives:
      self.truncated["negatives"] = 0
    self._base = None  # The converted dataset, built (and traced) once.
    self._iterator = None
    self._chunk: dict[str, np.ndarray] | None = None
    self._pos = 0

  def _open(self, epoch: int) -> None:
    from embed_jax.data import pipeline  # pylint: disable=import-outside-toplevel  # Cycle.
    if self._base is None:
      self._base = pipeline.converted_dataset(self.task, self.config, self.shard, self.num_shards)
      if not any(True for _ in self._base.take(1)):
        raise ConfigError(f"task {self.task.name!r} split {self.config.split!r} has no usable examples "
                          f"in shard {self.shard} of {self.num_shards}; use fewer shards or other data")
    base, shuffle = self._base, self.config.shuffle and self.shuffle_buffer > 1
    stream_seed = int(np.random.default_rng(
        [self.config.seed, order_lib.task_key(self.task.name), self.shard]).integers(2**30))

    def one_epoch(e):
      ds = base.shuffle(self.shuffle_buffer, seed=(stream_seed + e * 1_000_003) % 2**31) if shuffle else base
      return ds.map(lambda ex: {**ex, "_epoch": e})

    ds = tf.data.Dataset.range(epoch, 2**62).flat_map(one_epoch)
    self._iterator = ds.batch(_READ_BATCH).as_numpy_iterator()
    self.epoch, self.offset = epoch, 0
    self._chunk, self._pos = None, 0

  def _next_chunk(self) -> None:
    if self._iterator is None:
      self._open(0)
    chunk = next(self._iterator)
    for key, side in _TRUNCATED.items():
      if key in chunk:
        self.truncated[side] += int(chunk.pop(key).sum())
    chunk["y_ids"] = batch_format.sequence_hash(chunk["y_tokens"], chunk["y_mask"])
    self._chunk, self._pos = chunk, 0

  def take(self, count: int) -> dict[str, np.ndarray]:
    """The next `count` examples as arrays [count, ...]."""
    parts = []
    while count:
      if self._chunk is None or self._pos == len(self._chunk["y_ids"]):
        self._next_chunk()
      epochs = self._chunk["_epoch"]
      epoch = int(epochs[self._pos])
      if epoch != self.epoch:  # Streams always open at an epoch's start: the epoch was whole.
        self.epoch_size = self.epoch_size or self.offset
        self.epoch, self.offset = epoch, 0
      end = int(np.searchsorted(epochs, epoch, side="right"))
      n = min(count, end - self._pos)
      parts.append({k: v[self._pos:self._pos + n] for k, v in self._chunk.items() if k != "_epoch"})
      self._pos += n
      self.offset += n
      count -= n
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def seek(self, consumed: int) -> None:
    """Positions the stream after its first `consumed` examples (replaying the current epoch)."""
    epoch = consumed // self.epoch_size if self.epoch_size else 0
    self._open(epoch)
    remaining = consumed - epoch * (self.epoch_size or 0)
    while remaining:
      n = min(remaining, 4096)
      self.take(n)
      remaining -= n
      if self.epoch_size and remaining:  # Learnt on the way: skip whole epochs unread.
        epoch, offset = divmod(consumed, self.epoch_size)
        if epoch > self.epoch:
          self._open(epoch)
          remaining = offset


class StreamingPairBatchIterator:
  """This process's rows of each global batch, streamed; the interface of `PairBatchIterator`.

  Args:
    config: what to read (`pipeline.DataConfig`).
    process_index, process_count: override jax's.
    shuffle_buffer: examples each stream shuffles within (1: stream order).
  """

  def __init__(self, config, *, process_index: int | None = None, process_count: int | None = None,
               shuffle_buffer: int = 4096):
    from embed_jax.data import pipeline, tasks  # pylint: disable=import-outside-toplevel  # Cycle.
    self.config = config
    self.num_shards, self.local_shards, self.local_rows = pipeline.process_shards(
        config, process_index, process_count)
    self.global_batch_size = config.batch_size
    tasks_rates = pipeline.tasks_and_rates(config.task)
    pipeline._same_encoder([t for t, _ in tasks_rates])  # pylint: disable=protected-access
    rates = np.asarray([r for _, r in tasks_rates], np.float64)
    if np.any(rates < 0) or not rates.sum() > 0:
      raise ConfigError(f"mixing rates must be non-negative with a positive sum, got {rates}")
    self.task_names = [t.name for t, _ in tasks_rates]
    self.probabilities = rates / rates.sum()
    self.same_source_batches = tasks.same_source_batches(config.task)
    self.encoder = tasks_rates[0][0].output_features["x"].vocabulary.encoder
    self.streams = {t.name: {v: _Stream(t, config, v, self.num_shards, shuffle_buffer)
                             for v in self.local_shards} for t, _ in tasks_rates}
    self.step = 0
    self.consumed = {t: [0] * self.num_shards for t in self.task_names}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rows = self.global_batch_size // self.num_shards
    parts = []
    for shard in range(self.num_shards):
      choices = order_lib.task_choices(self.config.seed, self.probabilities, self.step, shard, rows,
                                       self.same_source_batches)
      if shard in self.local_shards:
        block = None
        for t, name in enumerate(self.task_names):
          picked = np.flatnonzero(choices == t)
          if picked.size:
            got = self.streams[name][shard].take(picked.size)
            if block is None:
              block = {k: np.empty((rows,) + a.shape[1:], a.dtype) for k, a in got.items()}
            for k, a in got.items():
              block[k][picked] = a
        parts.append(block)
      for t, name in enumerate(self.task_names):
        self.consumed[name][shard] += int(np.count_nonzero(choices == t))
    self.step += 1
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def truncation_report(self) -> str:
    lines = []
    for name, streams in self.streams.items():
      cut = {side: sum(s.truncated[side] for s in streams.values()) for side in next(iter(streams.values())).truncated}
      lines.append(f"{name}[{self.config.split}] (streamed): shards {self.local_shards} of {self.num_shards}; "
                   f"truncated so far " + ", ".join(f"{k} {v}" for k, v in cut.items()))
    return "\n".join(lines)

  def fingerprint(self) -> dict[str, list[int]]:
    out = {}
    for name in self.streams:
      source = seqio.get_mixture_or_task(name).source
      if hasattr(source, "fingerprint"):
        out.update(source.fingerprint(self.config.split))
    return out

  def get_state(self) -> dict:
    """JSON position, the same on every process (`pipeline.PairBatchIterator`'s format)."""
    from embed_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    order_state = {"format": order_lib.STATE_FORMAT, "seed": self.config.seed, "num_shards": self.num_shards,
                   "same_source_batches": self.same_source_batches, "step": self.step,
                   "consumed": {t: list(c) for t, c in self.consumed.items()}, "streaming": True}
    return {"format": pipeline._STATE_FORMAT, "task": self.config.task,  # pylint: disable=protected-access
            "split": self.config.split, "order": order_state}

  def set_state(self, state: Mapping) -> None:
    """Continues with the batch after the one at which `state` was taken."""
    from embed_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    if state.get("format") != pipeline._STATE_FORMAT:  # pylint: disable=protected-access
      raise order_lib.StateMismatchError(f"not a PairBatchIterator state: {state.get('format')!r}")
    for key in ("task", "split"):
      if state[key] != getattr(self.config, key):
        raise order_lib.StateMismatchError(
            f"saved state is for {key}={state[key]!r}, this iterator reads {getattr(self.config, key)!r}")
    saved = state["order"]
    for key, mine in (("seed", self.config.seed), ("num_shards", self.num_shards),
                      ("same_source_batches", self.same_source_batches), ("streaming", True)):
      if saved.get(key, False) != mine:
        raise order_lib.StateMismatchError(f"saved state has {key}={saved.get(key, False)}, this iterator {mine}")
    if sorted(saved["consumed"]) != sorted(self.task_names):
      raise order_lib.StateMismatchError(
          f"saved state is for tasks {sorted(saved['consumed'])}, this iterator reads {sorted(self.task_names)}")
    self.step = int(saved["step"])
    self.consumed = {t: [int(c) for c in saved["consumed"][t]] for t in self.task_names}
    for name, streams in self.streams.items():
      for shard, stream in streams.items():
        stream.seek(self.consumed[name][shard])
