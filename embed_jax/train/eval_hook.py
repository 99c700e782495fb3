"""Evaluation during training: validation loss/accuracy and held-out code-search MRR@10.

Code search follows the paper's setup on the built-in `stdlib_code` test split:
each docstring (side x) queries all test functions (side y); the score is the
mean reciprocal rank of its own function, counted only within the top 10.
`mrr_at_k` and `bm25_scores` are kept small and separate so the evaluation
package's versions can replace them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from embed_jax import partitioning
# Imported up front: it registers gin configurables, which cannot be added once gin is locked.
from embed_jax.data import stdlib_corpus

from embed_jax.embedding import embed_texts

MRR_KEY = "code_search_mrr@10"


def mrr_at_k(scores: np.ndarray, k: int = 10) -> float:
  """Mean reciprocal rank of the diagonal: scores [Q, N], query i's answer is column i.

  Rank = the number of columns scoring at least as high as the answer (ties
  count against it, so a query that scores everything 0 gets no credit);
  answers ranked below k count 0.
  """
  scores = np.asarray(scores, np.float64)
  answer = np.diagonal(scores)[:, None]
  rank = np.sum(scores >= answer, axis=1)
  return float(np.mean(np.where(rank <= k, 1.0 / rank, 0.0)))


def bm25_scores(queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
  """BM25 scores [Q, N] of every document for every query (bm25s, its default tokenizer)."""
  import bm25s  # pylint: disable=import-outside-toplevel
  logging.getLogger("bm25s").setLevel(logging.WARNING)
  retriever = bm25s.BM25()
  retriever.index(bm25s.tokenize(list(documents), show_progress=False), show_progress=False)
  query_tokens = bm25s.tokenize(list(queries), show_progress=False)
  ids, values = retriever.retrieve(query_tokens, k=len(documents), show_progress=False)
  scores = np.zeros((len(queries), len(documents)), np.float32)
  np.put_along_axis(scores, ids, values, axis=1)
  return scores


def stdlib_code_pairs(split: str = "test", max_examples: int | None = None) -> tuple[list[str], list[str]]:
  """(docstrings, functions) of the built-in stdlib_code corpus split, in file order."""
  with open(stdlib_corpus.corpus_file("stdlib_code", split), encoding="utf-8") as f:
    pairs = [json.loads(line) for line in f if line.strip()]
  pairs = pairs[:max_examples] if max_examples else pairs
  return [p["x"] for p in pairs], [p["y"] for p in pairs]


def code_search_mrr(module: Any, params: Any, text_encoder: Any, queries: Sequence[str],
                    code: Sequence[str], *, mesh=None, rules=None, x_length: int = 64,
                    y_length: int = 256, batch_size: int = 64, k: int = 10) -> float:
  """MRR@k of docstring -> code search with the model: rank every function for each docstring."""
  x = embed_texts(module, params, text_encoder, queries, side="x", max_length=x_length,
                  batch_size=batch_size, mesh=mesh, rules=rules)
  y = embed_texts(module, params, text_encoder, code, side="y", max_length=y_length,
                  batch_size=batch_size, mesh=mesh, rules=rules)
  return mrr_at_k(x @ y.T, k)


def bm25_code_search_mrr(queries: Sequence[str], code: Sequence[str], k: int = 10) -> float:
  """MRR@k of docstring -> code search with BM25 on the same split (the lexical baseline)."""
  return mrr_at_k(bm25_scores(queries, code), k)


class Evaluator:
  """Validation loss/accuracy (pipeline data) and stdlib_code test MRR@10 of a params tree.

  Args:
    objective: the run's objective; evaluation calls it without dropout and
      without chunking (`ContrastiveObjective.evaluate_batch`).
    text_encoder: how code-search texts become tokens.
    validation_batches: batches of the `DataConfig` task's validation split (0: none).
    code_search: include stdlib_code test MRR@10.
    max_examples: cap the code-search pairs (smoke runs).
    x_length, y_length: token lengths for code-search embedding.
    frozen: the objective's frozen params (a guide, LoRA's base), or None.
  """

  def __init__(self, objective, text_encoder, validation_batches: int, code_search: bool,
               max_examples: int | None, x_length: int, y_length: int, frozen: Any = None):
    self.objective = objective.replace(dropout=False)
    self.module, self.mesh, self.rules = objective.module, objective.mesh, objective.rules
    self.text_encoder = text_encoder
    self.validation_batches = int(validation_batches or 0)
    self.code_search = code_search
    self.max_examples = max_examples
    self.x_length, self.y_length = x_length, y_length
    self.frozen = frozen
    self._pairs = None
    self._validation = None
    self._loss = None
    self._encoder_params = jax.jit(self.objective.encoder_params)

  def encoder_params(self, params) -> Any:
    """The dual encoder's params of the trained `params` (merged with the frozen ones)."""
    if self.objective.params_view is None:
      return params
    return self._encoder_params(params, self.frozen)

  def _validation_metrics(self, params) -> dict[str, float]:
    from embed_jax.data import pipeline  # pylint: disable=import-outside-toplevel  # tensorflow side.
    if self._validation is None:
      config = dataclasses.replace(pipeline.DataConfig(), split="validation", shuffle=False)  # pylint: disable=no-value-for-parameter
      iterator = pipeline.global_batch_iterator(self.mesh, config, self.rules)
      self._validation = [next(iterator) for _ in range(self.validation_batches)]
      self._loss = jax.jit(self.objective.evaluate_batch)
    totals = {"validation_loss": 0.0, "validation_accuracy": 0.0}
    with partitioning.activate(self.mesh, self.rules):
      for batch in self._validation:
        loss, m = self._loss(params, batch, self.frozen)
        totals["validation_loss"] += float(loss) / len(self._validation)
        totals["validation_accuracy"] += 0.5 * float(
            m["accuracy_x_to_y"] + m["accuracy_y_to_x"]) / len(self._validation)
    return totals

  def pairs(self) -> tuple[list[str], list[str]]:
    if self._pairs is None:
      self._pairs = stdlib_code_pairs("test", self.max_examples)
    return self._pairs

  def __call__(self, params) -> dict[str, float]:
    out = {}
    if self.validation_batches:
      out.update(self._validation_metrics(params))
    if self.code_search:
      out[MRR_KEY] = code_search_mrr(
          self.module, self.encoder_params(params), self.text_encoder, *self.pairs(),
          mesh=self.mesh, rules=self.rules, x_length=self.x_length, y_length=self.y_length)
    return out

  def bm25(self) -> dict[str, float]:
    """BM25's MRR@10 on the same code-search pairs."""
    return {MRR_KEY: bm25_code_search_mrr(*self.pairs())}


def mrr_table(rows: Sequence[tuple[str, float]], title: str) -> str:
  """A plain-text table of (name, MRR@10) rows under `title`."""
  width = max(len(name) for name, _ in rows)
  lines = [title, f"{'':{width}}  MRR@10", f"{'-' * width}  ------"]
  lines += [f"{name:{width}}  {value:.4f}" for name, value in rows]
  return "\n".join(lines)
