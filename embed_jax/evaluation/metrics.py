"""Ranking and correlation metrics: nDCG@k, MRR@k, Recall@k, Spearman.

A query's result is a ranking: document ids best first, with their scores.
Relevance judgements (qrels) map query id -> {document id: grade}; a grade > 0
is relevant. Conventions follow trec_eval (the tool behind BEIR's numbers):
nDCG uses the grade itself as the gain, discounted by log2(rank + 1), and is
normalised by the ideal ranking of all judged documents; Recall@k divides by
all relevant documents of the query.

Ties: documents with equal scores are ordered worst first (ascending grade)
before any metric is taken, so a model gains nothing from a tie: a relevant
document tied with an irrelevant one ranks after it, and a model that gives
every document the same score earns the minimum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

Qrels = Mapping[str, Mapping[str, float]]


def order_ties_pessimistically(ids: Sequence[str], scores: Sequence[float] | None,
                               relevance: Mapping[str, float]) -> list[str]:
  """`ids` (already best first) with each run of equal scores reordered worst grade first."""
  ids = list(ids)
  if scores is None or len(ids) < 2:
    return ids
  scores = np.asarray(scores, np.float64)
  if len(scores) != len(ids):
    raise ValueError(f"{len(ids)} ids but {len(scores)} scores")
  out: list[str] = []
  start = 0
  for end in range(1, len(ids) + 1):
    if end == len(ids) or scores[end] != scores[start]:
      run = ids[start:end]
      out += sorted(run, key=lambda d: relevance.get(d, 0))  # sorted() is stable.
      start = end
  return out


def ndcg_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
  """nDCG@k of one ranking: sum_i grade_i / log2(i + 2) over the top k, over the ideal's."""
  dcg = sum(relevance.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
  ideal = sorted((g for g in relevance.values() if g > 0), reverse=True)[:k]
  idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
  return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
  """1 / rank of the first relevant document within the top k; 0 when none is there."""
  for i, d in enumerate(ranking[:k]):
    if relevance.get(d, 0) > 0:
      return 1.0 / (i + 1)
  return 0.0


def recall_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
  """Share of the query's relevant documents that appear in the top k."""
  relevant = {d for d, g in relevance.items() if g > 0}
  if not relevant:
    return 0.0
  return len(relevant.intersection(ranking[:k])) / len(relevant)


_METRICS = {"ndcg": ndcg_at_k, "mrr": mrr_at_k, "recall": recall_at_k}


def parse_metric(name: str) -> tuple[str, int]:
  """'ndcg@10' -> ('ndcg', 10), with a clear error for anything else."""
  base, _, k = name.partition("@")
  if base not in _METRICS or not k.isdigit() or int(k) < 1:
    raise ValueError(f"unknown metric {name!r}; use one of {sorted(_METRICS)} as NAME@K, e.g. ndcg@10")
  return base, int(k)


def evaluate_rankings(rankings: Mapping[str, tuple[Sequence[str], Sequence[float] | None]],
                      qrels: Qrels, metrics: Sequence[str]) -> dict[str, float]:
  """Mean of each metric over the queries of `qrels` that have a relevant document.

  Args:
    rankings: query id -> (document ids best first, their scores or None).
      A judged query missing here counts as an empty ranking (all zeros).
    qrels: query id -> {document id: grade}.
    metrics: names such as 'ndcg@10', 'mrr@10', 'recall@100'.
  Returns:
    {metric name: mean over the judged queries}.
  """
  parsed = [(m, *parse_metric(m)) for m in metrics]
  totals = {m: 0.0 for m in metrics}
  count = 0
  for qid, relevance in qrels.items():
    if not any(g > 0 for g in relevance.values()):
      continue
    ids, scores = rankings.get(qid, ((), None))
    ranking = order_ties_pessimistically(ids, scores, relevance)
    for name, base, k in parsed:
      totals[name] += _METRICS[base](ranking, relevance, k)
    count += 1
  if count == 0:
    raise ValueError("no query in the relevance judgements has a relevant document")
  return {m: totals[m] / count for m in metrics}


def spearman(predicted: Sequence[float], gold: Sequence[float]) -> float:
  """Spearman rank correlation (ties get average ranks) of two equally long score lists."""
  predicted, gold = np.asarray(predicted, np.float64), np.asarray(gold, np.float64)
  if predicted.shape != gold.shape or predicted.ndim != 1 or len(gold) < 2:
    raise ValueError(f"spearman needs two 1-D lists of equal length >= 2, got {predicted.shape} "
                     f"and {gold.shape}")
  return float(stats.spearmanr(predicted, gold).statistic)
