"""`embed-jax eval` and `embed-jax search` end to end on a tiny random model (8 fake devices).

Checked against independent computations: brute-force numpy scores and ranks
from the same embeddings (embed_with_model), not the evaluation package's search or metrics.
"""

import json
import os

import gin
import jax
import numpy as np
import pytest

from embed_jax import embedding, main
from embed_jax.checkpoints import model_dir
from embed_jax.evaluation import runner, tasks
from embed_jax.models import BertConfig, DualEncoderConfig, init_dual_encoder

MAX_LENGTH = 48


def _main(argv):
  """One CLI call, as from a fresh process (each call parses and locks the gin config)."""
  gin.clear_config(clear_constants=True)
  return main.main(argv)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, minilm_tokenizer_json):
  config = DualEncoderConfig(encoder=BertConfig(d_model=32, num_layers=1, num_heads=2, d_ff=64,
                                                max_length=MAX_LENGTH), pooling="mean")
  _, params = init_dual_encoder(config, jax.random.key(0))
  templates = {"x_prefix": ("[CLS]",), "x_suffix": ("[SEP]",), "y_prefix": ("[CLS]",),
               "y_suffix": ("[SEP]",)}
  return str(model_dir.save_model(tmp_path_factory.mktemp("tiny") / "model", config, params,
                                  tokenizer_path=minilm_tokenizer_json, templates=templates))


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
  return model_dir.load_model(tiny_model_dir)


def _synthetic_data_dir(root, shared=None):
  """senteval/mr with word-determined labels and a toy BEIR folder; cosqa linked from `shared`."""
  rng = np.random.default_rng(0)
  good, bad = ["great", "wonderful", "superb"], ["awful", "terrible", "boring"]
  fillers = ["film", "movie", "story", "plot", "acting", "ending", "music", "cast"]
  lines = [f"{label} the {rng.choice(fillers)} was {rng.choice(good if label else bad)}"
           for label in [0, 1] * 40]
  os.makedirs(root / "senteval" / "mr")
  (root / "senteval" / "mr" / "rt-polarity.all").write_text("\n".join(lines) + "\n")
  toy = root / "toy"
  os.makedirs(toy / "qrels")
  docs = [{"_id": f"d{i}", "title": f"topic {w}", "text": f"all about {w} and more"}
          for i, w in enumerate(fillers)]
  (toy / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
  (toy / "queries.jsonl").write_text("".join(
      json.dumps({"_id": f"q{i}", "text": f"tell me about {w}"}) + "\n" for i, w in enumerate(fillers)))
  (toy / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
      f"q{i}\td{i}\t1\n" for i in range(len(fillers))))
  if shared:
    os.symlink(os.path.join(shared, "cosqa"), root / "cosqa")
  return str(root)


def _independent_mrr_at_10(queries, documents, relevant):
  """MRR@10 by brute force: rank of the relevant row = 1 + rows scoring at least as high (ties count against)."""
  scores = queries @ documents.T
  correct = scores[np.arange(len(queries)), relevant]
  ranks = (scores >= correct[:, None]).sum(axis=1)
  return float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0)))


def test_eval_probe_retrieval_and_code_search(tmp_path, tiny_model_dir, tiny_model, request):
  try:
    shared = request.getfixturevalue("shared_datasets")
  except pytest.skip.Exception:
    shared = None
  data_dir = _synthetic_data_dir(tmp_path / "data", shared)
  names = ["mr", "toy", "stdlib_code"] + (["cosqa"] if shared else [])
  out = tmp_path / "out"
  assert _main(["eval", "--model", tiny_model_dir, "--tasks", ",".join(names), "--data_dir",
                    data_dir, "--out", str(out), "--batch_size", "256"]) == 0
  results = json.loads((out / "results.json").read_text())
  assert set(names) <= set(results)
  # Word-determined labels: a linear probe on any reasonable features beats chance by far.
  assert results["mr"]["accuracy"] > 0.8 and len(results["mr"]["c_per_fold"]) == 10
  assert set(results["toy"]["model"]) == set(tasks.BEIR_METRICS)
  assert results["toy"]["bm25"]["mrr@10"] > 0.9  # each query shares its topic word with its doc
  assert set(results["stdlib_code"]["model"]) == set(tasks.CODE_METRICS)
  assert results["stdlib_code"]["num_queries"] > 100
  report = (out / "report.md").read_text()
  assert "| mr | probe | model |" in report and "| toy | retrieval | bm25 |" in report
  for plot in ("scores.png", "recall_at_k.png"):
    assert (out / plot).read_bytes()[:4] == b"\x89PNG"
  if shared:
    data = tasks.formats.read_cosqa(os.path.join(shared, "cosqa"))
    doc_ids = list(data.corpus)
    documents = embedding.embed_with_model(tiny_model, [data.corpus[d] for d in doc_ids], side="y",
                                           batch_size=256)
    queries = embedding.embed_with_model(tiny_model, list(data.queries.values()), side="x",
                                         batch_size=256)
    relevant = [doc_ids.index(next(iter(data.qrels[q]))) for q in data.queries]
    assert results["cosqa"]["model"]["mrr@10"] == pytest.approx(
        _independent_mrr_at_10(queries, documents, np.array(relevant)), abs=1e-6)
    assert results["cosqa"]["num_documents"] == 6267 and "recall@1" in results["cosqa"]["bm25"]


def test_eval_bad_inputs_are_clear_errors(tmp_path, tiny_model_dir):
  (tmp_path / "stsb").mkdir()
  (tmp_path / "stsb" / "sts-test.csv").write_text("not\ta\tsts\tfile\n")
  with pytest.raises(main.CommandLineError, match=r"sts-test.csv:1: expected tab-separated STS-B"):
    _main(["eval", "--model", tiny_model_dir, "--tasks", "stsb", "--data_dir", str(tmp_path),
               "--out", str(tmp_path / "out")])
  with pytest.raises(main.CommandLineError, match="unknown task 'bogus'"):
    _main(["eval", "--model", tiny_model_dir, "--tasks", "bogus", "--data_dir", str(tmp_path),
               "--out", str(tmp_path / "out")])


def test_search_cli_matches_brute_force(tmp_path, tiny_model_dir, tiny_model):
  documents = [f"document number {i} about {w}" for i, w in enumerate(
      ["cats", "dogs", "parsing json", "sorting lists", "http servers", "regular expressions",
       "dates", "threads", "sockets", "files", "unicode"])]
  queries = ["how to sort a list", "read a file", "a cat"]
  (tmp_path / "corpus.jsonl").write_text("".join(
      json.dumps({"_id": f"doc{i}", "text": t}) + "\n" for i, t in enumerate(documents)))
  (tmp_path / "queries.txt").write_text("\n".join(queries) + "\n")
  out = tmp_path / "hits.jsonl"
  assert _main(["search", "--model", tiny_model_dir, "--corpus", str(tmp_path / "corpus.jsonl"),
                    "--queries", str(tmp_path / "queries.txt"), "--k", "4", "--output", str(out)]) == 0
  hits = [json.loads(line) for line in out.read_text().splitlines()]
  scores = (embedding.embed_with_model(tiny_model, queries, side="x")
            @ embedding.embed_with_model(tiny_model, documents, side="y").T)
  for row, record in zip(scores, hits):
    best = np.argsort(-row, kind="stable")[:4]
    assert [h["id"] for h in record["hits"]] == [f"doc{i}" for i in best]
    np.testing.assert_allclose([h["score"] for h in record["hits"]], row[best], atol=1e-5)
  assert [r["query_id"] for r in hits] == ["1", "2", "3"]
  (tmp_path / "bad.jsonl").write_text('{"text": "no id"}\n')
  with pytest.raises(main.CommandLineError, match=r"bad.jsonl:1: expected a JSON object with fields '_id'"):
    _main(["search", "--model", tiny_model_dir, "--corpus", str(tmp_path / "bad.jsonl"),
               "--queries", str(tmp_path / "queries.txt")])


def test_run_tasks_resolves_every_name_before_working(tmp_path):
  calls = []
  with pytest.raises(ValueError, match="unknown task 'typo'"):
    runner.run_tasks(lambda label: calls.append(label), ["stsb", "typo"], str(tmp_path))
  assert not calls
