"""Host-local batches of a task or mixture: deterministic, resumable, sharded by process.

    config = DataConfig(task="stdlib_code", batch_size=256)        # or DataConfig() from gin
    host = PairBatchIterator(config)                                 # this process's rows
    batches = global_batches.GlobalBatchIterator(host, mesh)         # global jax.Arrays
    state = batches.get_state()            # JSON; store it in the checkpoint
    batches.set_state(state)               # a restored run continues with the next unseen example

Each process reads only its own shards of each task (`order` explains the
layout): it runs the seqio task for each, through `PairFeatureConverter`, and
keeps the fixed-length result in memory as numpy arrays. Batches are then
gathered by index in the order `order.ShardedOrder` fixes. Holding the
process's share of the converted examples costs O(examples * length) memory
(the stdlib corpora: a few MB) and start-up time to tokenise them once; for
corpora far beyond that, use more processes or cache the tokenised task.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import gin
import jax
import numpy as np
import seqio

from embed_jax import partitioning, tokenization
from embed_jax.data import batch_format, global_batches, order as order_lib
from embed_jax.data import document_tasks
from embed_jax.data import tasks as _tasks  # pylint: disable=unused-import  # Registers the built-in tasks.
from embed_jax.errors import ConfigError
from embed_jax.data.feature_converter import PairFeatureConverter
from embed_jax.data.vocabularies import TemplateVocabulary

log = logging.getLogger(__name__)

_MATERIALIZE_BATCH = 2048
_STATE_FORMAT = "embed_jax.data.pipeline/1"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to read and how to batch it.

  Attributes:
    task: a registered task or mixture name (from gin also `@file_task()` / `@mixture()`).
    split: 'train' | 'validation' | 'test'.
    batch_size: the GLOBAL batch size (all processes together).
    x_length, y_length: token lengths of each side, delimiters included.
    num_negatives: hard negatives per example (H); 0 for none.
    seed: fixes the order of examples and the mixture's choices.
    shuffle: a new permutation each epoch (False: file order, e.g. for evaluation).
    num_shards: shards of each task; None = one per process. Keep it fixed to
      resume on a different number of processes with the same order.
    streaming: read each shard as a stream (`streaming.StreamingPairBatchIterator`)
      instead of holding the process's share in memory: for corpora larger than
      memory (document and tfds tasks, `file_task(streaming=True)`).
  """

  task: str
  split: str = "train"
  batch_size: int = 32
  x_length: int = 128
  y_length: int = 128
  num_negatives: int = 0
  seed: int = 0
  shuffle: bool = True
  num_shards: int | None = None
  streaming: bool = False


def tasks_and_rates(name: str) -> list[tuple[seqio.Task, float]]:
  """The tasks of a task or mixture name, with their (unnormalised) mixing rates."""
  provider = seqio.get_mixture_or_task(name)
  if isinstance(provider, seqio.Task):
    return [(provider, 1.0)]
  return [(task, float(provider.get_rate(task))) for task in provider.tasks]


def feature_converter(task: seqio.Task, num_negatives: int = 0) -> PairFeatureConverter:
  """The converter for `task`, knowing its vocabularies' suffix lengths and pad ids."""
  vocabs = {side: task.output_features[side].vocabulary for side in ("x", "y")}
  for side, vocab in vocabs.items():
    if not isinstance(vocab, TemplateVocabulary):
      raise TypeError(f"task {task.name!r}: feature {side!r} needs a TemplateVocabulary, "
                      f"got {type(vocab).__name__}")
  return PairFeatureConverter(
      suffix_lengths={s: len(v.template.suffix_ids) for s, v in vocabs.items()},
      pad_ids={s: v.pad_id for s, v in vocabs.items()},
      num_negatives=num_negatives, teacher_scores=has_teacher_scores(task))


def has_teacher_scores(task: seqio.Task) -> bool:
  """True when the task's source gives each example a teacher's scores (a teacher-scores field)."""
  fields = getattr(task.source, "fields", None)
  return getattr(fields, "teacher_scores", None) is not None


def converted_dataset(task: seqio.Task, config: DataConfig, shard: int = 0, num_shards: int = 1):
  """tf.data.Dataset of one shard of the task's split, in source order, as model features."""
  converter = feature_converter(task, config.num_negatives)
  for side, length in (("x", config.x_length), ("y", config.y_length)):
    overhead = task.output_features[side].vocabulary.template.overhead
    if length < overhead:
      raise tokenization.TokenizationError(
          f"{side}_length={length} leaves no room for the {overhead} template tokens of {side}")
  ds = task.get_dataset(
      sequence_length=None, split=config.split, shuffle=False, num_epochs=1,
      shard_info=seqio.ShardInfo(shard, num_shards), trim_output_features=False)
  return converter(ds, converter.task_feature_lengths(config.x_length, config.y_length))


@dataclasses.dataclass
class ShardTable:
  """The converted examples of one shard of one task, in memory.

  Attributes:
    features: batch-format name -> array [n, ...] (y_ids included).
    truncated: side ("x", "y", "negatives") -> how many of them were cut.
  """

  features: dict[str, np.ndarray]
  truncated: dict[str, int]

  @property
  def size(self) -> int:
    return len(self.features["y_ids"])


def materialize(task: seqio.Task, config: DataConfig, shard: int, num_shards: int) -> ShardTable:
  """Runs the task's shard through preprocessing and conversion; keeps the arrays."""
  ds = converted_dataset(task, config, shard, num_shards).batch(_MATERIALIZE_BATCH)
  chunks = list(ds.as_numpy_iterator())
  if not chunks:
    made = document_tasks.counts(task.name)
    why = (f" ({made['documents']} documents read, {made['too_short']} too short for the pair "
           f"builder, {made['without_pairs']} without a pair)" if made["documents"] else "")
    raise ConfigError(f"task {task.name!r} split {config.split!r} has no usable examples in shard "
                      f"{shard} of {num_shards}{why}; use fewer shards or other data")
  features = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  truncated = {"x": int(features.pop("x_truncated").sum()), "y": int(features.pop("y_truncated").sum())}
  if config.num_negatives:
    truncated["negatives"] = int(features.pop("neg_truncated").sum())
  features["y_ids"] = batch_format.sequence_hash(features["y_tokens"], features["y_mask"])
  return ShardTable(features, truncated)


def _same_encoder(tasks: list[seqio.Task]) -> None:
  described = {t.name: (t.output_features["x"].vocabulary, t.output_features["y"].vocabulary) for t in tasks}
  first = next(iter(described.values()))
  for name, vocabs in described.items():
    if vocabs != first:
      raise ValueError(f"the tasks of a mixture must share one vocabulary; {name!r} has {vocabs}, "
                       f"{tasks[0].name!r} has {first}")


def _same_teacher_scores(tasks: list[seqio.Task]) -> None:
  """Raises unless all tasks of a mixture have teacher scores, or none (a batch has them or not)."""
  having = [t.name for t in tasks if has_teacher_scores(t)]
  if having and len(having) != len(tasks):
    lacking = [t.name for t in tasks if t.name not in having]
    raise ConfigError(f"the tasks of a mixture must all have teacher scores or none: {having} have "
                      f"a teacher_scores_field, {lacking} do not")


def process_shards(config: DataConfig, process_index: int | None = None,
                   process_count: int | None = None) -> tuple[int, list[int], slice]:
  """(num_shards, this process's shard indices, its rows of the global batch) for `config`.

  The data is split into `config.num_shards` (default: one per process) shards, each
  process reading an equal run of them; the global batch must split evenly over them.
  """
  count = jax.process_count() if process_count is None else process_count
  index = jax.process_index() if process_index is None else process_index
  num_shards = config.num_shards or count
  if num_shards % count:
    raise ConfigError(f"num_shards={num_shards} is not divisible by the {count} processes")
  if config.batch_size % num_shards:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by num_shards={num_shards}")
  per_process = num_shards // count
  local_shards = list(range(index * per_process, (index + 1) * per_process))
  rows = partitioning.host_local_batch_slice(config.batch_size, process_count=count,
                                             process_index=index)
  return num_shards, local_shards, rows


class PairBatchIterator:
  """This process's rows of each global batch of a task or mixture, as numpy arrays.

  Args:
    config: what to read; None takes `DataConfig()` from gin.
    process_index, process_count: override jax's (to test multi-process layouts
      in one process).

  Yields dicts in the batch format (`batch_format`), each array [B / processes, ...].
  """

  def __init__(self, config: DataConfig | None = None, *, process_index: int | None = None,
               process_count: int | None = None):
    self.config = config = config if config is not None else DataConfig()  # pylint: disable=no-value-for-parameter
    self.num_shards, self.local_shards, self.local_rows = process_shards(
        config, process_index, process_count)
    self.global_batch_size = config.batch_size

    tasks_rates = tasks_and_rates(config.task)
    _same_encoder([t for t, _ in tasks_rates])
    _same_teacher_scores([t for t, _ in tasks_rates])
    self.encoder = tasks_rates[0][0].output_features["x"].vocabulary.encoder
    self.tables = {
        task.name: {v: materialize(task, config, v, self.num_shards) for v in self.local_shards}
        for task, _ in tasks_rates}
    self.order = order_lib.ShardedOrder(
        [t.name for t, _ in tasks_rates], [r for _, r in tasks_rates],
        {name: {v: table.size for v, table in shards.items()} for name, shards in self.tables.items()},
        self.num_shards, config.seed, config.shuffle,
        same_source_batches=_tasks.same_source_batches(config.task))
    log.info("%s", self.truncation_report())

  def truncation_report(self) -> str:
    """Per task: examples read by this process and how many of each side were cut."""
    lines = []
    for name, shards in self.tables.items():
      n = sum(t.size for t in shards.values())
      cut = {side: sum(t.truncated[side] for t in shards.values()) for side in next(iter(shards.values())).truncated}
      shown = ", ".join(f"{side} {c} ({100.0 * c / n:.1f}%)" for side, c in cut.items())
      lines.append(f"{name}[{self.config.split}]: {n} examples in shards {self.local_shards} of "
                   f"{self.num_shards}; truncated {shown} at x_length={self.config.x_length}, "
                   f"y_length={self.config.y_length}")
    return "\n".join(lines)

  def __iter__(self) -> PairBatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    blocks = self.order.next_step(self.global_batch_size, self.local_shards)
    parts = []
    for shard, (choices, examples) in zip(self.local_shards, blocks):
      tables = [self.tables[name][shard] for name in self.order.tasks]
      features = tables[0].features
      block = {k: np.empty((len(choices),) + a.shape[1:], a.dtype) for k, a in features.items()}
      for t, table in enumerate(tables):
        rows = np.flatnonzero(choices == t)
        if rows.size:
          for k, a in table.features.items():
            block[k][rows] = a[examples[rows]]
      parts.append(block)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def fingerprint(self) -> dict[str, list[int]]:
    """The files behind this iterator's tasks (path -> [size, mtime_ns]), where sources tell them."""
    out = {}
    for name in self.tables:
      source = seqio.get_mixture_or_task(name).source
      if hasattr(source, "fingerprint"):
        out.update(source.fingerprint(self.config.split))
    return out

  def get_state(self) -> dict:
    """JSON-serialisable position, the same on every process."""
    return {"format": _STATE_FORMAT, "task": self.config.task, "split": self.config.split,
            "order": self.order.get_state()}

  def set_state(self, state: Mapping) -> None:
    """Continues with the batch after the one at which `state` was taken."""
    if state.get("format") != _STATE_FORMAT:
      raise order_lib.StateMismatchError(f"not a PairBatchIterator state: {state.get('format')!r}")
    for key in ("task", "split"):
      if state[key] != getattr(self.config, key):
        raise order_lib.StateMismatchError(
            f"saved state is for {key}={state[key]!r}, this iterator reads {getattr(self.config, key)!r}")
    self.order.set_state(state["order"])


def global_batch_iterator(mesh: jax.sharding.Mesh, config: DataConfig | None = None,
                          rules: partitioning.LogicalRules | None = None, transform=None):
  """`GlobalBatchIterator` over this process's `PairBatchIterator` (config from gin if None).

  transform: the iterator's host-batch transform (e.g. packing), or None.
  """
  return global_batches.GlobalBatchIterator(host_batch_iterator(config), mesh, rules, transform)


def host_batch_iterator(config: DataConfig | None = None):
  """`PairBatchIterator`, or with `config.streaming` a `StreamingPairBatchIterator` (gin's config if None)."""
  config = config if config is not None else DataConfig()  # pylint: disable=no-value-for-parameter
  if config.streaming:
    from embed_jax.data import streaming  # pylint: disable=import-outside-toplevel
    return streaming.StreamingPairBatchIterator(config)
  return PairBatchIterator(config)
