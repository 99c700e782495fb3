"""Which example fills each row of each global batch: deterministic, resumable, shardable.

The examples of every task are split into `num_shards` shards (example i of a
task's split is in shard i mod num_shards). A global batch of B rows is made of
num_shards blocks of B / num_shards rows, block v drawn from shard v. Each
(task, shard) is read as an endless stream: epoch after epoch, each epoch a
permutation of the shard seeded by (seed, task, shard, epoch). For a mixture,
each row of block v at step k first picks its task at random with the mixture's
rates, from a generator seeded by (seed, step, shard). With
`same_source_batches`, the whole global batch at step k picks one task, from a
generator seeded by (seed, step) alone, so every row of it (all shards, all
processes) comes from that task (BGE's `same_dataset_within_batch`).

So the order is fixed by the seed and the shard count alone, whatever the number
of processes reading it: a process that owns shards [a, b) makes exactly rows
[a, b) * B / num_shards of every global batch. Within a shard stream every
example is seen once per epoch.

The state is the step and, per task and shard, how many examples its stream has
given: `{"seed", "num_shards", "step", "consumed": {task: [count per shard]}}`,
the same on every process. Restoring it costs one permutation of each local
shard (O(examples of the process)); nothing is replayed.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from embed_jax.errors import UserError

STATE_FORMAT = "embed_jax.data.order/1"
_MIXTURE_STREAM = 0x6D6978


class StateMismatchError(UserError):
  """A saved iterator state does not belong to this data configuration."""


def task_key(name: str) -> int:
  """A stable integer for a task name (seeds must not depend on Python's hash())."""
  return zlib.crc32(name.encode("utf-8"))


def task_choices(seed: int, probabilities: np.ndarray, step: int, shard: int, rows: int,
                 same_source_batches: bool = False) -> np.ndarray:
  """Task index [rows] of each row of `shard`'s block at `step` (the mixture's draw)."""
  if len(probabilities) == 1:
    return np.zeros(rows, np.int64)
  if same_source_batches:
    rng = np.random.default_rng([seed, _MIXTURE_STREAM, step])
    return np.full(rows, rng.choice(len(probabilities), p=probabilities), np.int64)
  rng = np.random.default_rng([seed, _MIXTURE_STREAM, step, shard])
  return rng.choice(len(probabilities), size=rows, p=probabilities)


class ShardedOrder:
  """The order of examples for a task or mixture over `num_shards` shards.

  Args:
    tasks: task names.
    rates: one mixing rate per task (any positive scale).
    shard_sizes: task -> {shard index -> number of examples} for the shards this
      process reads (the others need no size).
    num_shards: total shard count (the same on every process).
    seed: the seed of every permutation and task choice.
    shuffle: permute each epoch (else the stream is the shard in order).
    same_source_batches: each global batch draws all its rows from one task.
  """

  def __init__(self, tasks: Sequence[str], rates: Sequence[float],
               shard_sizes: Mapping[str, Mapping[int, int]], num_shards: int,
               seed: int, shuffle: bool = True, same_source_batches: bool = False):
    if len(tasks) != len(rates) or not tasks:
      raise ValueError("need one rate per task, and at least one task")
    rates = np.asarray(rates, np.float64)
    if np.any(rates < 0) or not rates.sum() > 0:
      raise ValueError(f"mixing rates must be non-negative with a positive sum, got {rates}")
    self.tasks = list(tasks)
    self.probabilities = rates / rates.sum()
    self.shard_sizes = {t: dict(shard_sizes[t]) for t in tasks}
    for t, sizes in self.shard_sizes.items():
      for v, n in sizes.items():
        if n <= 0 and self.probabilities[self.tasks.index(t)] > 0:
          raise ValueError(f"task {t!r} has no examples in shard {v} of {num_shards}; "
                           f"use fewer shards (data has too few examples)")
    self.num_shards = num_shards
    self.seed = int(seed)
    self.shuffle = shuffle
    self.same_source_batches = bool(same_source_batches)
    self.step = 0
    self.consumed = {t: [0] * num_shards for t in tasks}
    self._permutations: dict[tuple[str, int], tuple[int, np.ndarray]] = {}

  def _task_choices(self, step: int, shard: int, rows: int) -> np.ndarray:
    """Task index of each of `rows` rows of `shard`'s block at `step`."""
    return task_choices(self.seed, self.probabilities, step, shard, rows, self.same_source_batches)

  def _permutation(self, task: str, shard: int, epoch: int) -> np.ndarray:
    cached = self._permutations.get((task, shard))
    if cached is not None and cached[0] == epoch:
      return cached[1]
    n = self.shard_sizes[task][shard]
    if self.shuffle:
      perm = np.random.default_rng([self.seed, task_key(task), shard, epoch]).permutation(n)
    else:
      perm = np.arange(n)
    self._permutations[(task, shard)] = (epoch, perm)
    return perm

  def _stream(self, task: str, shard: int, start: int, count: int) -> np.ndarray:
    """Example indices at positions [start, start + count) of a (task, shard) stream."""
    n = self.shard_sizes[task][shard]
    out = np.empty(count, np.int64)
    done = 0
    while done < count:
      epoch, offset = divmod(start + done, n)
      take = min(count - done, n - offset)
      out[done:done + take] = self._permutation(task, shard, epoch)[offset:offset + take]
      done += take
    return out

  def next_step(self, batch_size: int, local_shards: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Advances one global batch; returns, per local shard, (task index, example index) per row.

    Every process calls this with the same batch size, so every process keeps the
    same (global) counters, whichever shards it reads.
    """
    if batch_size % self.num_shards:
      raise ValueError(f"global batch {batch_size} is not divisible by the {self.num_shards} shards")
    rows = batch_size // self.num_shards
    local = set(local_shards)
    blocks = {}
    for shard in range(self.num_shards):
      choices = self._task_choices(self.step, shard, rows)
      if shard in local:
        examples = np.empty(rows, np.int64)
        for t, task in enumerate(self.tasks):
          picked = choices == t
          if picked.any():
            examples[picked] = self._stream(task, shard, self.consumed[task][shard], int(picked.sum()))
        blocks[shard] = (choices, examples)
      for t, task in enumerate(self.tasks):
        self.consumed[task][shard] += int(np.count_nonzero(choices == t))
    self.step += 1
    return [blocks[shard] for shard in local_shards]

  def get_state(self) -> dict:
    """JSON-serialisable position: the next step gives the next unseen examples."""
    return {"format": STATE_FORMAT, "seed": self.seed, "num_shards": self.num_shards,
            "same_source_batches": self.same_source_batches, "step": self.step, "consumed": {t: list(c) for t, c in self.consumed.items()}}

  def set_state(self, state: Mapping) -> None:
    """Continues from a `get_state()` of an order with the same seed, shards and tasks."""
    if state.get("format") != STATE_FORMAT:
      raise StateMismatchError(f"not an iterator state of {STATE_FORMAT}: {state.get('format')!r}")
    for key, mine in (("seed", self.seed), ("num_shards", self.num_shards),
                      ("same_source_batches", self.same_source_batches)):
      if state.get(key, False) != mine:
        raise StateMismatchError(f"saved state has {key}={state[key]}, this iterator {key}={mine}")
    if sorted(state["consumed"]) != sorted(self.tasks):
      raise StateMismatchError(
          f"saved state is for tasks {sorted(state['consumed'])}, this iterator reads {sorted(self.tasks)}")
    self.step = int(state["step"])
    self.consumed = {t: [int(c) for c in state["consumed"][t]] for t in self.tasks}
