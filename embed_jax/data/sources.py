"""A seqio DataSource of (x, y, negatives) pairs read from JSONL / TSV files.

Each split names a path, a glob, or several (or a function returning them, so
that the built-in corpora are extracted on first use, not at import). The files
are read in Python (`pair_files`, strict, errors naming file and line) once per
process and change of file; shard i of n holds the examples whose index is
i modulo n, so any shard count works and shards are disjoint.

Examples have string features `x`, `y` and `negatives` (a possibly empty list),
and with a teacher-scores field float32 `teacher_scores` [1 + its negatives].
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from embed_jax.data import pair_files, pair_streams
from embed_jax.errors import ConfigError

Patterns = str | Sequence[str]


def _decontaminated(records: pair_files.PairRecords, against: str):
  """(records without the pairs that duplicate evaluation texts, report); unchanged if no data."""
  from embed_jax.data import decontamination  # pylint: disable=import-outside-toplevel
  found = decontamination.decontaminator(against)
  if found is None:
    return records, decontamination.Report(kept=len(records), missing_sets=["(no folder)"])
  checker, missing = found
  keep, report = decontamination.filter_pairs(
      ([x, y] + negatives for x, y, negatives in zip(records.x, records.y, records.negatives)),
      checker, missing)
  if report.dropped:
    logging.getLogger(__name__).info("decontaminated against %s: %s", against, report.line())
  kept = pair_files.PairRecords([records.x[i] for i in keep], [records.y[i] for i in keep],
                                [records.negatives[i] for i in keep],
                                [records.teacher_scores[i] for i in keep], list(records.skipped))
  return kept, report


class PairFileDataSource(seqio.DataSource):
  """seqio source over pair files.

  Args:
    split_to_patterns: split name -> path(s) or glob(s), or a function returning them.
    fields: which JSON field / TSV column holds x, y and the negatives.
    format: 'jsonl' | 'tsv', or None to tell from each file's suffix.
    skip_bad_examples: skip and count bad lines; None takes the gin macro
      `skip_bad_examples` at read time.
    decontaminate_against: an evaluation data folder (as `embed-jax eval
      --data_dir`): pairs duplicating its texts are dropped (`decontamination`);
      None keeps every pair.
    streaming: read the files lazily, line by line, in file order (for files
      larger than memory; `pair_streams`), never whole; `shuffle` then permutes
      only the order of files. Not with `decontaminate_against`.
  """

  def __init__(self, split_to_patterns: Mapping[str, Patterns | Callable[[], Patterns]],
               fields: pair_files.PairFields = pair_files.PairFields(),
               format: str | None = None,  # pylint: disable=redefined-builtin
               skip_bad_examples: bool | None = None,
               decontaminate_against: str | None = None,
               streaming: bool = False):
    if streaming and decontaminate_against:
      raise ConfigError("a streaming pair-file source cannot be decontaminated on the fly; "
                        "run `embed-jax data decontaminate` on the files first")
    if streaming and fields.teacher_scores is not None:
      raise ConfigError(f"teacher_scores_field={fields.teacher_scores!r} is not supported with "
                        "streaming=True; read the files whole (streaming=False)")
    self.streaming = streaming
    self._split_to_patterns = dict(split_to_patterns)
    self.decontaminate_against = decontaminate_against
    self._clean: dict[str, tuple] = {}  # split -> (records read, records kept, report)
    self.fields = fields
    self._format = format
    self._skip_bad_examples = skip_bad_examples
    super().__init__(splits=tuple(self._split_to_patterns))

  def _patterns(self, split: str) -> Patterns:
    if split not in self._split_to_patterns:
      raise ValueError(f"split {split!r} is not one of {tuple(self._split_to_patterns)}")
    patterns = self._split_to_patterns[split]
    return patterns() if callable(patterns) else patterns

  def records(self, split: str) -> pair_files.PairRecords:
    """Every pair of the split, as Python strings (read once until a file changes)."""
    records = pair_files.read_pairs_cached(
        self._patterns(split), self.fields, self._format, self._skip_bad_examples)
    if not self.decontaminate_against:
      return records
    cached = self._clean.get(split)
    if cached is None or cached[0] is not records:
      cached = (records,) + _decontaminated(records, self.decontaminate_against)
      self._clean[split] = cached
    return cached[1]

  def decontamination_report(self, split: str):
    """The `decontamination.Report` of the split, or None without `decontaminate_against`."""
    if not self.decontaminate_against:
      return None
    self.records(split)
    return self._clean[split][2]

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return pair_files.expand_patterns(self._patterns(split))

  def fingerprint(self, split: str) -> dict[str, list[int]]:
    """path -> [size, mtime in ns] of the split's files: a resume tells a changed file by it."""
    out = {}
    for path in self.list_shards(split):
      mtime, size = pair_files.file_stamp(path)
      out[path] = [size, mtime]
    return out

  def num_input_examples(self, split: str) -> int | None:
    return None if self.streaming else len(self.records(split))

  def _streamed(self, split, shuffle, seed, shard_info) -> tf.data.Dataset:
    files = self.list_shards(split)
    if shuffle:
      files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    shard, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    fields, format, skip = self.fields, self._format, self._skip_bad_examples  # pylint: disable=redefined-builtin

    def generate():
      for x, y, negatives in pair_streams.iter_pairs(files, fields, format, skip, shard, count):
        yield {"x": x, "y": y, "negatives": negatives}

    return tf.data.Dataset.from_generator(generate, output_signature={
        "x": tf.TensorSpec([], tf.string), "y": tf.TensorSpec([], tf.string),
        "negatives": tf.TensorSpec([None], tf.string)})

  def get_dataset(
      self,
      split: str = "train",
      shuffle: bool = True,
      seed: int | None = None,
      shard_info: seqio.ShardInfo | None = None,
      *,
      sequence_length: Mapping[str, int] | None = None,  # Unused.
      use_cached: bool = False,  # Unused.
      num_epochs: int | None = 1,  # Unused.
  ) -> tf.data.Dataset:
    """The split's examples (of one shard), in file order unless `shuffle`."""
    del sequence_length, use_cached, num_epochs
    if self.streaming:
      return self._streamed(split, shuffle, seed, shard_info)
    records = self.records(split)
    index = np.arange(len(records))
    if shard_info is not None:
      index = index[shard_info.index::shard_info.num_shards]
    if shuffle:
      index = np.random.default_rng(seed).permutation(index)
    negatives = [records.negatives[i] for i in index]
    features = {
        "x": tf.constant([records.x[i] for i in index], tf.string, shape=[len(index)]),
        "y": tf.constant([records.y[i] for i in index], tf.string, shape=[len(index)]),
        "negatives": tf.RaggedTensor.from_row_lengths(
            tf.constant([n for row in negatives for n in row], tf.string,
                        shape=[sum(len(row) for row in negatives)]),
            np.array([len(row) for row in negatives], np.int64)),
    }
    if self.fields.teacher_scores is not None:
      scores = [records.teacher_scores[i] for i in index]
      features["teacher_scores"] = tf.RaggedTensor.from_row_lengths(
          tf.constant([v for row in scores for v in row], tf.float32,
                      shape=[sum(len(row) for row in scores)]),
          np.array([len(row) for row in scores], np.int64))
    return tf.data.Dataset.from_tensor_slices(features)
