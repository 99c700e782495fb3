"""seqio DataSources of documents: the user's text / JSONL files, or any tfds dataset.

Examples have one string feature `text` (paragraphs separated by blank lines);
`document_tasks.build_pairs` turns them into (x, y) pairs.

Files are read lazily (`documents.iter_documents`): a split may be far larger
than memory. With at least as many files as shards, each shard reads only its
own files (file i goes to shard i mod n); else each shard keeps every n-th
document. A tfds dataset is read through `seqio.TfdsDataSource` (sharded by
tfds file) and its text feature renamed to `text`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from embed_jax.data import documents, pair_files
from embed_jax.errors import ConfigError

Patterns = str | Sequence[str]


class DocumentFileDataSource(seqio.DataSource):
  """seqio source over document files (text or JSONL).

  Args:
    split_to_patterns: split name -> path(s) or glob(s), or a function returning them.
    fields: the files' layout (`documents.DocumentFields`).
  """

  def __init__(self, split_to_patterns: Mapping[str, Patterns | Callable[[], Patterns]],
               fields: documents.DocumentFields = documents.DocumentFields()):
    self._split_to_patterns = dict(split_to_patterns)
    self.fields = fields
    super().__init__(splits=tuple(self._split_to_patterns))

  def _patterns(self, split: str) -> Patterns:
    if split not in self._split_to_patterns:
      raise ConfigError(f"split {split!r} is not one of {tuple(self._split_to_patterns)}")
    patterns = self._split_to_patterns[split]
    return patterns() if callable(patterns) else patterns

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
    return None  # Unknown without reading the files.

  def documents(self, split: str, shard: int = 0, num_shards: int = 1):
    """(id, text) of the shard's documents, lazily, in file order."""
    return documents.iter_documents(self.list_shards(split), self.fields, shard, num_shards)

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
    """The split's documents (of one shard), in file order; `shuffle` permutes the files."""
    del sequence_length, use_cached, num_epochs
    files = self.list_shards(split)
    if shuffle:
      files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    shard, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    fields = self.fields

    def generate():
      for _, text in documents.iter_documents(files, fields, shard, count):
        yield {"text": text}

    return tf.data.Dataset.from_generator(
        generate, output_signature={"text": tf.TensorSpec([], tf.string)})


def check_tfds(name: str, data_dir: str | None, text_feature: str, splits: Sequence[str]) -> None:
  """Raises `ConfigError` unless tfds dataset `name` exists with string feature `text_feature`."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several kinds (DatasetNotFoundError, ...).
    raise ConfigError(f"tfds dataset {name!r} (data_dir={data_dir!r}) not found: "
                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  features = builder.info.features
  if text_feature not in features:
    raise ConfigError(f"tfds dataset {name!r} has no feature {text_feature!r} "
                      f"(features: {sorted(features.keys())})")
  if features[text_feature].dtype != tf.string:
    raise ConfigError(f"tfds dataset {name!r}: feature {text_feature!r} is "
                      f"{features[text_feature].dtype}, not text")
  missing = [s for s in splits if s.split("[")[0] not in builder.info.splits]
  if missing:
    raise ConfigError(f"tfds dataset {name!r} has no split {missing[0]!r} "
                      f"(splits: {sorted(builder.info.splits.keys())})")


def tfds_source(name: str, data_dir: str | None, splits: Mapping[str, str]) -> seqio.TfdsDataSource:
  """`seqio.TfdsDataSource` reading tfds dataset `name` (our split -> tfds split)."""
  return seqio.TfdsDataSource(tfds_name=name, tfds_data_dir=data_dir, splits=dict(splits))


def rename_text_feature(dataset: tf.data.Dataset, text_feature: str, title_feature: str = "") -> tf.data.Dataset:
  """seqio preprocessor: `{text_feature: ...}` -> `{"text": ...}`, the title as first paragraph."""

  def rename(example):
    text = example[text_feature]
    if title_feature:
      text = tf.strings.join([example[title_feature], text], separator="\n\n")
    return {"text": text}

  return dataset.map(rename, num_parallel_calls=tf.data.AUTOTUNE)
