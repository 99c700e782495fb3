"""Pair tasks built from documents: seqio preprocessors and gin-configurable task factories.

    DataConfig.task = @wiki/document_task()
    wiki/document_task.name = 'wiki_neighbours'
    wiki/document_task.train = '/data/wiki/*.jsonl'
    wiki/document_task.text_field = 'text'
    wiki/document_task.title_field = 'title'
    wiki/document_task.pairs = @neighbouring()
    neighbouring.unit = 'words'

    DataConfig.task = @books/tfds_task()
    books/tfds_task.name = 'books_crops'
    books/tfds_task.tfds_name = 'my_books:1.0.0'
    books/tfds_task.data_dir = '/data/tfds'
    books/tfds_task.text_feature = 'text'
    books/tfds_task.pairs = @cropping()

`build_pairs` (the seqio preprocessor) runs the builder on each document in
Python and flattens its pairs into examples `x`, `y`, `negatives` (none); the
usual tokenising preprocessors follow. Documents too short for the builder are
skipped and counted in `counts(task)`.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from embed_jax.data import documents, pair_builders, preprocessors, tasks
from embed_jax.data.document_sources import (DocumentFileDataSource, check_tfds, rename_text_feature,
                                             tfds_source)
from embed_jax.errors import ConfigError

_COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def counts(task: str) -> collections.Counter:
  """Documents read, skipped as too short, without any pair, and pairs made by `task`'s builder.

  Keys 'documents', 'too_short', 'without_pairs', 'pairs' (and 'decontaminated':
  pairs dropped as duplicates of evaluation texts); summed over every
  pass over the task's data in this process since `reset_counts(task)`.
  """
  return _COUNTS[task]


def reset_counts(task: str) -> None:
  _COUNTS[task].clear()


def build_pairs(dataset: tf.data.Dataset, builder: pair_builders.PairBuilder, seed: int = 0,
                task: str = "") -> tf.data.Dataset:
  """seqio preprocessor: documents `{"text"}` -> pairs `{"x", "y", "negatives": []}`.

  Each document's pairs come from `builder.build(text, seed)`, in order; the
  pairs of one document are consecutive examples.
  """
  tally = _COUNTS[task]

  def build(text: bytes):
    text = text.decode("utf-8")
    tally["documents"] += 1
    if builder.too_short(text):
      tally["too_short"] += 1
      pairs = []
    else:
      pairs = builder.build(text, seed)
      tally["without_pairs"] += not pairs
      tally["pairs"] += len(pairs)
    x = np.array([p[0].encode("utf-8") for p in pairs], dtype=object).reshape(len(pairs))
    y = np.array([p[1].encode("utf-8") for p in pairs], dtype=object).reshape(len(pairs))
    return x, y

  def to_pairs(example):
    x, y = tf.numpy_function(build, [example["text"]], (tf.string, tf.string), stateful=True)
    x.set_shape([None])
    y.set_shape([None])
    return tf.data.Dataset.from_tensor_slices({"x": x, "y": y})

  def with_negatives(pair):
    # Shape [None], as the pair-file source gives, so that batching keeps it ragged.
    none = tf.raw_ops.PlaceholderWithDefault(input=tf.zeros([0], tf.string), shape=[None])
    return {"x": pair["x"], "y": pair["y"], "negatives": none}

  return dataset.flat_map(to_pairs).map(with_negatives)


def drop_contaminated(dataset: tf.data.Dataset, against: str, task: str = "") -> tf.data.Dataset:
  """seqio preprocessor: drops pairs whose x or y duplicates a text of the evaluation data `against`.

  Counted in `counts(task)['decontaminated']`; a missing folder drops nothing.
  """
  from embed_jax.data import decontamination  # pylint: disable=import-outside-toplevel
  found = decontamination.decontaminator(against)
  if found is None:
    return dataset
  checker = found[0]
  tally = _COUNTS[task]

  def clean(x: bytes, y: bytes) -> bool:
    hit = checker.match_pair([x.decode("utf-8"), y.decode("utf-8")])
    if hit is not None:
      tally["decontaminated"] += 1
    return hit is None

  return dataset.filter(lambda ex: tf.reshape(
      tf.numpy_function(clean, [ex["x"], ex["y"]], tf.bool, stateful=True), []))


def register_document_task(name: str, source: seqio.DataSource, builder: pair_builders.PairBuilder,
                           seed: int = 0, before: Sequence = (),
                           output_features=None, decontaminate_against: str | None = None) -> seqio.Task:
  """Registers (replacing any of that name) a pair task over a document source."""
  if not isinstance(builder, pair_builders.PairBuilder):
    raise ConfigError(f"task {name!r}: pairs must be @neighbouring(), @cropping() or @ict(), "
                      f"got {builder!r}")
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  reset_counts(name)
  steps = list(before) + [
      functools.partial(build_pairs, builder=builder, seed=seed, task=name)]
  if decontaminate_against:
    steps.append(functools.partial(drop_contaminated, against=decontaminate_against, task=name))
  steps += [preprocessors.tokenize_pairs, preprocessors.truncate_keeping_suffix]
  return seqio.TaskRegistry.add(name, source=source, preprocessors=steps,
                                output_features=output_features or tasks.pair_output_features())


def _splits(name: str, **given) -> dict:
  splits = {s: p for s, p in given.items() if p}
  if not splits:
    raise ConfigError(f"task {name!r}: give files for at least one of train, validation, test")
  return splits


@gin.configurable
def document_task(name: str = gin.REQUIRED,
                  train: str | Sequence[str] | None = None,
                  validation: str | Sequence[str] | None = None,
                  test: str | Sequence[str] | None = None,
                  pairs: pair_builders.PairBuilder | None = None,
                  format: str | None = None,  # pylint: disable=redefined-builtin
                  separator: str = "file",
                  text_field: str = "text",
                  title_field: str = "",
                  seed: int = 0,
                  decontaminate_against: str | None = None) -> str:
  """Registers a task of pairs built from document files; returns its name.

  Args:
    name: the task's name.
    train, validation, test: path(s) or glob(s) of each split (at least one).
    pairs: the pair builder (`@neighbouring()` by default, `@cropping()`, `@ict()`).
    format: 'text' | 'jsonl'; None tells from each file's suffix.
    separator: text files: 'file' (one document per file) or 'blank_line'.
    text_field, title_field: JSONL fields of the text and of an optional title.
    seed: the builder's seed (the same seed gives the same pairs).
    decontaminate_against: an evaluation data folder; pairs duplicating its
      texts are dropped (`decontamination`), counted in `counts(name)`.
  """
  fields = documents.DocumentFields(format, separator, text_field, title_field)
  source = DocumentFileDataSource(_splits(name, train=train, validation=validation, test=test), fields)
  register_document_task(name, source, pairs or pair_builders.Neighbouring(), seed,
                         decontaminate_against=decontaminate_against)
  return name


@gin.configurable
def tfds_task(name: str = gin.REQUIRED,
              tfds_name: str = gin.REQUIRED,
              data_dir: str | None = None,
              text_feature: str = "text",
              title_feature: str = "",
              splits: Sequence[str] | dict = ("train",),
              pairs: pair_builders.PairBuilder | None = None,
              seed: int = 0,
              decontaminate_against: str | None = None) -> str:
  """Registers a task of pairs built from a tfds dataset's text feature; returns its name.

  Args:
    name: the task's name.
    tfds_name: the dataset, e.g. 'wikipedia/20230601.en' or 'my_docs:1.0.0'.
    data_dir: tfds data_dir (None: tfds' default). Nothing is downloaded: the
      dataset must already be prepared there.
    text_feature, title_feature: the string features of the text and title ('' none).
    splits: our split names (equal to the tfds ones), or {ours: tfds split}.
    pairs: the pair builder (`@neighbouring()` by default).
    seed: the builder's seed.
    decontaminate_against: an evaluation data folder (as for `document_task`).
  """
  splits = dict(splits) if isinstance(splits, dict) else {s: s for s in splits}
  check_tfds(tfds_name, data_dir, text_feature, list(splits.values()))
  rename = functools.partial(rename_text_feature, text_feature=text_feature, title_feature=title_feature)
  register_document_task(name, tfds_source(tfds_name, data_dir, splits),
                         pairs or pair_builders.Neighbouring(), seed, before=[rename],
                         decontaminate_against=decontaminate_against)
  return name
