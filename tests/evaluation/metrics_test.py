"""Ranking metrics and Spearman against hand-computed values."""

import math

import numpy as np
import pytest

from embed_jax.evaluation import metrics


def test_ndcg_with_graded_relevance():
  relevance = {"a": 3, "b": 2, "c": 1, "z": 0}
  ranking = ["z", "b", "a", "x"]
  dcg = 0 / math.log2(2) + 2 / math.log2(3) + 3 / math.log2(4)
  ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
  assert metrics.ndcg_at_k(ranking, relevance, 10) == pytest.approx(dcg / ideal)
  # At k=2 only "z", "b" count, and the ideal is cut at 2 as well.
  assert metrics.ndcg_at_k(ranking, relevance, 2) == pytest.approx(
      (2 / math.log2(3)) / (3 + 2 / math.log2(3)))
  assert metrics.ndcg_at_k(["a", "b", "c"], relevance, 3) == pytest.approx(1.0)
  assert metrics.ndcg_at_k(["q"], {"q": 0}, 3) == 0.0


def test_mrr_and_recall():
  relevance = {"d2": 1, "d5": 1}
  ranking = ["d9", "d8", "d2", "d5"]
  assert metrics.mrr_at_k(ranking, relevance, 10) == pytest.approx(1 / 3)
  assert metrics.mrr_at_k(ranking, relevance, 2) == 0.0
  assert metrics.recall_at_k(ranking, relevance, 3) == 0.5
  assert metrics.recall_at_k(ranking, relevance, 4) == 1.0


def test_ties_rank_relevant_documents_last_within_the_tie():
  relevance = {"rel": 1}
  # "rel" is listed first but ties with two irrelevant documents at 0.5: it counts as rank 3.
  ids, scores = ["top", "rel", "x", "y", "low"], [0.9, 0.5, 0.5, 0.5, 0.1]
  ranking = metrics.order_ties_pessimistically(ids, scores, relevance)
  assert ranking == ["top", "x", "y", "rel", "low"]
  result = metrics.evaluate_rankings({"q": (ids, scores)}, {"q": relevance},
                                     ["mrr@10", "mrr@3", "recall@3"])
  assert result == {"mrr@10": pytest.approx(1 / 4), "mrr@3": 0.0, "recall@3": 0.0}
  # Without scores the given order stands.
  assert metrics.evaluate_rankings({"q": (ids, None)}, {"q": relevance}, ["mrr@10"]) == {
      "mrr@10": 0.5}
  # All scores equal: graded documents go worst first.
  assert metrics.order_ties_pessimistically(["a", "b", "c"], [1, 1, 1], {"a": 2, "b": 1}) == [
      "c", "b", "a"]


def test_evaluate_rankings_averages_over_judged_queries():
  qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}  # q3 has nothing relevant: skipped.
  rankings = {"q1": (["a", "b"], [2.0, 1.0])}  # q2 missing: counts as an empty ranking.
  assert metrics.evaluate_rankings(rankings, qrels, ["mrr@10"]) == {"mrr@10": 0.5}
  with pytest.raises(ValueError, match="unknown metric 'map@10'"):
    metrics.evaluate_rankings(rankings, qrels, ["map@10"])


def test_spearman_by_hand_with_ties():
  predicted = [0.1, 0.4, 0.4, 0.9]  # ranks 1, 2.5, 2.5, 4
  gold = [1.0, 2.0, 4.0, 3.0]       # ranks 1, 2, 4, 3
  rp, rg = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 4, 3.0])
  expected = np.corrcoef(rp, rg)[0, 1]
  assert metrics.spearman(predicted, gold) == pytest.approx(expected)
  assert metrics.spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
  with pytest.raises(ValueError, match="equal length"):
    metrics.spearman([1, 2], [1, 2, 3])
