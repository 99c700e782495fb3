"""Retrieval evaluation: dense (our embeddings, sharded exact search) and the BM25 baseline.

Queries are embedded as side x and documents as side y; documents are ranked
by inner product (cosine for L2-normalised models) with `search.CorpusIndex`.
BM25 (`bm25s`, English stop words) ranks the same documents for the same
queries, so both rows of a report use identical data and metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import gin
import numpy as np
from jax.sharding import Mesh

from embed_jax.evaluation import metrics as metrics_lib
from embed_jax.evaluation import search
from embed_jax.evaluation.formats import RetrievalData

# (texts, side) -> float32 [len(texts), d]
EmbedFn = Callable[[Sequence[str], str], np.ndarray]
Rankings = dict[str, tuple[list[str], list[float]]]
CURVE_KS = (1, 2, 3, 5, 10, 20, 50, 100)
DUPLICATE_WARNING_SHARE = 0.01

log = logging.getLogger(__name__)


def _as_rankings(query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray,
                 rows: np.ndarray) -> Rankings:
  return {q: ([doc_ids[j] for j in row], [float(s) for s in row_scores])
          for q, row, row_scores in zip(query_ids, rows, scores)}


def shared_embedding_share(embeddings: np.ndarray) -> float:
  """Fraction of the rows of [N, d] `embeddings` that equal (bit for bit) at least one other row."""
  if len(embeddings) < 2:
    return 0.0
  _, inverse, counts = np.unique(np.ascontiguousarray(embeddings), axis=0, return_inverse=True,
                                 return_counts=True)
  return float(np.mean(counts[inverse.reshape(-1)] > 1))


def dense_rankings(embed: EmbedFn, data: RetrievalData, k: int, mesh: Mesh | None = None,
                   stats: dict | None = None) -> Rankings:
  """Top-k documents per query by embedding inner product.

  Warns when more than DUPLICATE_WARNING_SHARE of the documents share their
  embedding with another one (ties rank worst first, so such a corpus scores
  low by design); `stats`, when given, receives that share.
  """
  doc_ids, query_ids = list(data.corpus), list(data.queries)
  documents = embed([data.corpus[d] for d in doc_ids], "y")
  share = shared_embedding_share(documents)
  if stats is not None:
    stats["shared_embedding_share"] = share
  if share > DUPLICATE_WARNING_SHARE:
    log.warning("%.1f%% of the %d documents share an identical embedding with another document: "
                "tied documents rank worst first, so this lowers the scores (duplicate texts, or "
                "texts cut to the same first tokens by max_length?)", 100 * share, len(documents))
  queries = embed([data.queries[q] for q in query_ids], "x")
  scores, rows = search.CorpusIndex(documents, mesh).search(queries, k)
  return _as_rankings(query_ids, doc_ids, scores, rows)


def bm25_rankings(data: RetrievalData, k: int) -> Rankings:
  """Top-k documents per query by BM25 (bm25s defaults, English stop words)."""
  import bm25s  # pylint: disable=import-outside-toplevel
  doc_ids, query_ids = list(data.corpus), list(data.queries)
  retriever = bm25s.BM25()
  retriever.index(bm25s.tokenize([data.corpus[d] for d in doc_ids], stopwords="en",
                                 show_progress=False), show_progress=False)
  tokens = bm25s.tokenize([data.queries[q] for q in query_ids], stopwords="en", return_ids=False,
                          show_progress=False)
  rows, scores = retriever.retrieve(tokens, k=min(k, len(doc_ids)), show_progress=False)
  return _as_rankings(query_ids, doc_ids, np.asarray(scores), np.asarray(rows))


def recall_curve(rankings: Rankings, data: RetrievalData, ks: Sequence[int] = CURVE_KS) -> dict[str, float]:
  """Recall@k for each k (keys 'recall@k'), for plotting."""
  return metrics_lib.evaluate_rankings(rankings, data.qrels, [f"recall@{k}" for k in ks])


@gin.configurable(denylist=["embed", "data", "metrics", "mesh"])
def evaluate_retrieval(embed: EmbedFn, data: RetrievalData, metrics: Sequence[str],
                       mesh: Mesh | None = None, bm25: bool = True,
                       curve_ks: Sequence[int] = CURVE_KS) -> dict:
  """Dense (and BM25) metrics of one retrieval task.

  Returns:
    {"model": {metric: value}, "bm25": {...} (when `bm25`), "recall_curve":
    {"model": {recall@k: value}, "bm25": ...}, "num_queries" (the queries with a
    relevant document: those the metrics average over), "num_skipped_queries"
    (queries whose judgements are all 0), "num_documents",
    "shared_embedding_share"}.
  """
  depth = max([metrics_lib.parse_metric(m)[1] for m in metrics] + list(curve_ks))
  stats: dict = {}
  systems = {"model": dense_rankings(embed, data, depth, mesh, stats)}
  if bm25:
    systems["bm25"] = bm25_rankings(data, depth)
  result: dict = {name: metrics_lib.evaluate_rankings(r, data.qrels, metrics)
                  for name, r in systems.items()}
  result["recall_curve"] = {name: recall_curve(r, data, curve_ks) for name, r in systems.items()}
  judged = sum(any(g > 0 for g in data.qrels.get(q, {}).values()) for q in data.queries)
  result["num_queries"] = judged
  result["num_skipped_queries"] = len(data.queries) - judged
  result["num_documents"] = len(data.corpus)
  result.update(stats)
  return result
