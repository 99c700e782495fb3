"""Evaluation during training: validation loss/accuracy and held-out code-search MRR@10.

Code search follows the paper's setup on the built-in `stdlib_code` test split:
each docstring (side x) queries all test functions (side y); the score is the
mean reciprocal rank of its own function, counted only within the top 10.
`mrr_at_k` and `bm25_scores` are kept small and separate so the evaluation
package's versions can replace them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from embed_jax.embedding import embed_texts


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
  retriever = bm25s.BM25()
  retriever.index(bm25s.tokenize(list(documents), show_progress=False), show_progress=False)
  query_tokens = bm25s.tokenize(list(queries), show_progress=False)
  ids, values = retriever.retrieve(query_tokens, k=len(documents), show_progress=False)
  scores = np.zeros((len(queries), len(documents)), np.float32)
  np.put_along_axis(scores, ids, values, axis=1)
  return scores


def stdlib_code_pairs(split: str = "test", max_examples: int | None = None) -> tuple[list[str], list[str]]:
  """(docstrings, functions) of the built-in stdlib_code corpus split, in file order."""
  from embed_jax.data import stdlib_corpus  # pylint: disable=import-outside-toplevel
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
