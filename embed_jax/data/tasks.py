"""seqio tasks and mixtures of (x, y) pairs: the built-in corpora and the user's files.

Importing this module registers:

  stdlib_code           (docstring paragraph, function source) from the local stdlib (cpt-code)
  stdlib_text           neighbouring paragraphs of help topics and module docstrings (cpt-text)
  stdlib_code_and_text  mixture of both, rates proportional to their sizes
  python_code           (docstring paragraph, function) from the stdlib and site-packages,
                        numpy, scipy and tests excluded, decontaminated (`code_corpus`)
  python_docs           neighbouring paragraphs of their module docstrings, the installed
                        distributions' descriptions and the help topics

Every task has output features `x`, `y` and `negatives`, tokenised by
`ConfiguredVocabulary` (gin's `text_encoder`), delimiters included. T5X-style
use works too, e.g. `seqio.get_dataset(name, converter.task_feature_lengths(Lx,
Ly), feature_converter=pipeline.feature_converter(task))`: given sequence
lengths, the task truncates each text keeping its closing delimiter before
seqio's own trimming could drop it.

The user's files become tasks from gin, and mixtures likewise; each
configurable registers (or replaces) the task when gin calls it and returns its
name, so it can stand wherever a task name goes:

    DataConfig.task = @my_pairs/file_task()
    my_pairs/file_task.name = 'my_pairs'
    my_pairs/file_task.train = '/data/pairs/train-*.jsonl'
    my_pairs/file_task.x_field = 'query'
    my_pairs/file_task.y_field = 'positive'

    DataConfig.task = @mix/mixture()
    mix/mixture.name = 'mine_and_stdlib'
    mix/mixture.tasks = [(@my_pairs/file_task(), 3.0), ('stdlib_code', 1.0)]

Instructions: `file_task(x_prompt=..., y_prompt=...)`, or a built-in task with
prompts as a new task, `@code/prompted_task()` with `prompted_task.task =
'stdlib_code'`, `.x_prompt = 'Given a docstring, retrieve the code: '`. The
prompt is put before each text of its side; `task_prompts(name)` tells the
trainer, which leaves the prompt's tokens out of mean pooling and stores the
prompts with the trained model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import gin
import seqio
import tensorflow as tf

from embed_jax.data import code_corpus, pair_files, preprocessors, stdlib_corpus, vocabularies
from embed_jax.data.sources import PairFileDataSource
from embed_jax.errors import ConfigError

SPLITS = ("train", "validation", "test")
_TASK_PROMPTS: dict[str, dict[str, str]] = {}  # task name -> side -> its prompt


def pair_output_features(x_vocabulary: seqio.Vocabulary | None = None,
                         y_vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
  """Output features of a pair task; default vocabularies follow gin's `text_encoder`."""
  x_vocabulary = x_vocabulary or vocabularies.ConfiguredVocabulary("x")
  y_vocabulary = y_vocabulary or vocabularies.ConfiguredVocabulary("y")
  return {
      "x": seqio.Feature(x_vocabulary, add_eos=False, dtype=tf.int32),
      "y": seqio.Feature(y_vocabulary, add_eos=False, dtype=tf.int32),
      "negatives": seqio.Feature(y_vocabulary, add_eos=False, dtype=tf.int32, rank=2),
  }


def register_pair_task(name: str, source: seqio.DataSource,
                       output_features: dict[str, seqio.Feature] | None = None,
                       prompts: dict[str, str] | None = None) -> seqio.Task:
  """Registers (replacing any task of that name) a task tokenising `source`'s pairs.

  prompts: side ("x", "y") -> an instruction put before each of that side's texts.
  """
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  prompts = {side: str(p) for side, p in (prompts or {}).items() if p}
  steps = [preprocessors.tokenize_pairs, preprocessors.truncate_keeping_suffix]
  if prompts:
    steps.insert(0, functools.partial(preprocessors.prepend_prompts, prompts=prompts))
  _TASK_PROMPTS[name] = prompts
  return seqio.TaskRegistry.add(
      name, source=source, preprocessors=steps,
      output_features=output_features or pair_output_features())


def task_prompts(name: str) -> dict[str, str]:
  """side -> prompt of a task, or of a mixture whose tasks all have the same prompts."""
  provider = seqio.get_mixture_or_task(name)
  names = [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [name]
  found = {n: _TASK_PROMPTS.get(n, {}) for n in names}
  if len({tuple(sorted(p.items())) for p in found.values()}) > 1:
    raise ConfigError(f"the tasks of mixture {name!r} have different prompts {found}; a model is "
                      "trained with one prompt per side")
  return dict(found[names[0]]) if names else {}


_SAME_SOURCE_MIXTURES: set[str] = set()


def same_source_batches(name: str) -> bool:
  """True for a mixture registered with `same_source_batches=True`."""
  return name in _SAME_SOURCE_MIXTURES


def register_mixture(name: str, tasks: Sequence[tuple[str, float] | str], default_rate=None,
                     same_source_batches: bool = False) -> seqio.Mixture:
  """Registers (replacing any mixture of that name) a seqio Mixture with rates.

  same_source_batches: every global batch draws all its rows from one task
  (chosen with the rates), so in-batch negatives are of one kind.
  """
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  _SAME_SOURCE_MIXTURES.discard(name)
  if same_source_batches:
    _SAME_SOURCE_MIXTURES.add(name)
  return seqio.MixtureRegistry.add(name, [tuple(t) if isinstance(t, list) else t for t in tasks],
                                   default_rate=default_rate)


@gin.configurable
def file_task(name: str = gin.REQUIRED,
              train: str | Sequence[str] | None = None,
              validation: str | Sequence[str] | None = None,
              test: str | Sequence[str] | None = None,
              format: str | None = None,  # pylint: disable=redefined-builtin
              x_field: str = "x",
              y_field: str = "y",
              negatives_field: str | Sequence[str] = (),
              teacher_scores_field: str | None = None,
              decontaminate_against: str | None = None,
              streaming: bool = False,
              x_prompt: str = "",
              y_prompt: str = "") -> str:
  """Registers a task reading the user's JSONL / TSV files; returns its name.

  Args:
    name: the task's name.
    train, validation, test: path(s) or glob(s) of each split (at least one).
    format: 'jsonl' | 'tsv'; None tells each file's format from its suffix.
    x_field, y_field: JSON field / TSV column of the query (x) and positive (y).
    negatives_field: field(s) or column(s) of hard negatives (JSONL: string or list).
    teacher_scores_field: field (TSV: column, a JSON list) of a teacher's scores of
      the positive and each negative, 1 + the line's negatives finite numbers;
      batches then carry `teacher_scores` [B, 1+H] for `ContrastiveObjective.distill`.
    decontaminate_against: an evaluation data folder (e.g. '../shared/datasets'):
      pairs whose x, y or a negative duplicates one of its texts are dropped
      (`decontamination`: exact after case/whitespace normalisation, or 80% of
      word 8-grams either way); a missing folder drops nothing.
    streaming: read the files lazily, never whole (files larger than memory;
      use with `DataConfig.streaming = True`).
    x_prompt, y_prompt: an instruction put before each x (y and negative) text.
  """
  splits = {s: p for s, p in (("train", train), ("validation", validation), ("test", test)) if p}
  if not splits:
    raise ValueError(f"file_task {name!r}: give files for at least one of train, validation, test")
  negatives = (negatives_field,) if isinstance(negatives_field, str) else tuple(negatives_field)
  fields = pair_files.PairFields(x=x_field, y=y_field, negatives=negatives,
                                 teacher_scores=teacher_scores_field or None)
  register_pair_task(name, PairFileDataSource(splits, fields, format,
                                              decontaminate_against=decontaminate_against,
                                              streaming=streaming),
                     prompts={"x": x_prompt, "y": y_prompt})
  return name


@gin.configurable
def prompted_task(name: str = gin.REQUIRED, task: str = gin.REQUIRED, x_prompt: str = "",
                  y_prompt: str = "") -> str:
  """Registers task `name`: registered task `task` (e.g. a built-in) with per-side prompts."""
  if task not in seqio.TaskRegistry.names():
    raise ConfigError(f"prompted_task {name!r}: no registered task {task!r}")
  base = seqio.get_mixture_or_task(task)
  register_pair_task(name, base.source, base.output_features,
                     prompts={"x": x_prompt, "y": y_prompt})
  return name


@gin.configurable
def mixture(name: str = gin.REQUIRED, tasks: Sequence = gin.REQUIRED,
            same_source_batches: bool = False) -> str:
  """Registers a mixture of tasks with rates, `[(task_name, rate), ...]`; returns its name.

  same_source_batches: each global batch comes from one task (drawn with the
  rates), as BGE's `same_dataset_within_batch`; else every row draws its task.
  """
  register_mixture(name, tasks, same_source_batches=same_source_batches)
  return name


def _stdlib_split(corpus: str, split: str) -> str:
  return stdlib_corpus.corpus_file(corpus, split)


def _python_split(corpus: str, split: str) -> str:
  return code_corpus.corpus_file(corpus, split)


def register_builtin_tasks() -> None:
  """Registers the built-in tasks and their mixture (corpora extracted on first read)."""
  for corpus in stdlib_corpus.CORPORA:
    splits = {split: functools.partial(_stdlib_split, corpus, split) for split in SPLITS}
    register_pair_task(corpus, PairFileDataSource(splits, skip_bad_examples=False))
  for corpus in code_corpus.CORPORA:
    splits = {split: functools.partial(_python_split, corpus, split) for split in SPLITS}
    register_pair_task(corpus, PairFileDataSource(splits, skip_bad_examples=False))
  register_mixture("stdlib_code_and_text", list(stdlib_corpus.CORPORA),
                   default_rate=seqio.mixing_rate_num_examples)


register_builtin_tasks()
