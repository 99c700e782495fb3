"""Sharded exact top-k equals faiss IndexFlatIP (ids and scores), on 1 and 8 devices."""

import jax
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.evaluation import search

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  corpus = rng.normal(size=(203, 24)).astype(np.float32)  # 203 = not a multiple of 8
  queries = rng.normal(size=(37, 24)).astype(np.float32)
  index = faiss.IndexFlatIP(24)
  index.add(corpus)
  return corpus, queries, index


@pytest.mark.parametrize("devices,chunk_size,k", [
    (1, 50, 10),     # several chunks on one device
    (8, 7, 10),      # 26 rows per shard in chunks of 7 (padded)
    (8, 4096, 40),   # k = 40 > 26 rows per shard
    (8, 5, 203),     # k = the whole corpus
])
def test_top_k_matches_faiss(data, devices, chunk_size, k):
  corpus, queries, index = data
  mesh = partitioning.create_mesh(devices=jax.devices()[:devices])
  scores, ids = search.top_k(queries, corpus, k, mesh=mesh, chunk_size=chunk_size,
                             query_batch_size=16)
  want_scores, want_ids = index.search(queries, k)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  assert ids.dtype == np.int64 and scores.shape == (len(queries), k)


def test_k_beyond_the_corpus_returns_it_all_and_ties_prefer_lower_rows():
  corpus = np.ones((5, 4), np.float32)  # every row scores the same
  mesh = partitioning.create_mesh()  # 8 devices for 5 rows: most shards are padding
  scores, ids = search.top_k(np.ones((2, 4), np.float32), corpus, 9, mesh=mesh, chunk_size=2)
  np.testing.assert_array_equal(ids, [[0, 1, 2, 3, 4]] * 2)
  np.testing.assert_allclose(scores, 4.0)


def test_bad_shapes_are_reported():
  with pytest.raises(ValueError, match=r"queries must be \[Q, 4\]"):
    search.CorpusIndex(np.zeros((3, 4))).search(np.zeros((2, 5)), 1)
  with pytest.raises(ValueError, match="corpus embeddings must be"):
    search.CorpusIndex(np.zeros((0, 4)))
