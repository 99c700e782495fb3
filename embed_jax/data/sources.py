"""A seqio DataSource of (x, y, negatives) pairs read from JSONL / TSV files.

Each split names a path, a glob, or several (or a function returning them, so
that the built-in corpora are extracted on first use, not at import). The files
are read in Python (`pair_files`, strict, errors naming file and line) once per
process and change of file; shard i of n holds the examples whose index is
i modulo n, so any shard count works and shards are disjoint.

Examples have string features `x`, `y` and `negatives` (a possibly empty list).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from embed_jax.data import pair_files

Patterns = str | Sequence[str]


class PairFileDataSource(seqio.DataSource):
  """seqio source over pair files.

  Args:
    split_to_patterns: split name -> path(s) or glob(s), or a function returning them.
    fields: which JSON field / TSV column holds x, y and the negatives.
    format: 'jsonl' | 'tsv', or None to tell from each file's suffix.
    skip_bad_examples: skip and count bad lines; None takes the gin macro
      `skip_bad_examples` at read time.
  """

  def __init__(self, split_to_patterns: Mapping[str, Patterns | Callable[[], Patterns]],
               fields: pair_files.PairFields = pair_files.PairFields(),
               format: str | None = None,  # pylint: disable=redefined-builtin
               skip_bad_examples: bool | None = None):
    self._split_to_patterns = dict(split_to_patterns)
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
    return pair_files.read_pairs_cached(
        self._patterns(split), self.fields, self._format, self._skip_bad_examples)

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

  def num_input_examples(self, split: str) -> int:
    return len(self.records(split))

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
    records = self.records(split)
    index = np.arange(len(records))
    if shard_info is not None:
      index = index[shard_info.index::shard_info.num_shards]
    if shuffle:
      index = np.random.default_rng(seed).permutation(index)
    negatives = [records.negatives[i] for i in index]
    return tf.data.Dataset.from_tensor_slices({
        "x": tf.constant([records.x[i] for i in index], tf.string, shape=[len(index)]),
        "y": tf.constant([records.y[i] for i in index], tf.string, shape=[len(index)]),
        "negatives": tf.RaggedTensor.from_row_lengths(
            tf.constant([n for row in negatives for n in row], tf.string,
                        shape=[sum(len(row) for row in negatives)]),
            np.array([len(row) for row in negatives], np.int64)),
    })
