"""The public Python API: lazy tensorflow-free import, train's summary, load/embed/similarity
against sentence-transformers' embeddings of the export, conversion cached once, evaluate
against a numpy MRR@10, and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import embed_jax
from embed_jax.api import ApiError
from embed_jax.api.runs import gin_bindings
from embed_jax.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXTS = ["add two numbers", "", "def up(s):\n    return s.upper()", "sort a list in place"]


def test_import_is_lazy_and_needs_no_tensorflow():
  code = ("import sys, embed_jax; before = sorted(m for m in ('jax', 'tensorflow', 'gin') "
          "if m in sys.modules); embed_jax.load; embed_jax.evaluate; embed_jax.train; "
          "print(before, 'tensorflow' in sys.modules, callable(embed_jax.train))")
  env = {**os.environ, "PYTHONPATH": REPO_ROOT}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       check=True, timeout=120).stdout.split()
  assert out == ["[]", "False", "True"]


def test_train_returns_the_run_summary_and_clears_gin(readme_run):
  import gin  # pylint: disable=import-outside-toplevel
  namespace, printed, run = readme_run
  summary = namespace["summary"]
  with open(run / "metrics.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  last_train = [r for r in records if r["split"] == "train"][-1]
  assert summary["step"] == last_train["step"] == 2 and summary["stopped_by"] is None
  assert summary["final_loss"] == pytest.approx(last_train["loss"])
  with open(run / "results.json", encoding="utf-8") as f:
    assert summary["final_eval"] == json.load(f)["final_eval"] != {}
  assert str(summary["final_eval"]["code_search_mrr@10"])[:6] in printed
  assert gin.config_str() == ""  # Nothing leaks into the next run in this process.


@pytest.fixture(scope="module")
def model(readme_run):
  return embed_jax.load(readme_run[2], dtype="float32")


def test_embed_matches_sentence_transformers_on_the_export(readme_run, model):
  from sentence_transformers import SentenceTransformer  # pylint: disable=import-outside-toplevel
  exported = SentenceTransformer(str(readme_run[2] / "sentence_transformers"), device="cpu")
  theirs = exported.encode(TEXTS, normalize_embeddings=True)
  ours = model.embed(TEXTS, side="x", batch_size=2)
  assert ours.shape == (len(TEXTS), model.dim) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
  np.testing.assert_allclose(model.embed(TEXTS[0]), ours[0], atol=1e-6)  # One str -> [d].
  assert model.max_length == 16  # DecoderConfig.max_length of runs/tiny_synthetic.gin.


def test_dim_truncates_and_renormalises(model):
  full = model.embed(TEXTS, side="y")
  short = model.embed(TEXTS, side="y", dim=8)
  expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
  np.testing.assert_allclose(short, expected, atol=1e-6)
  for bad in (0, model.dim + 1, 2.5):
    with pytest.raises(UserError, match="dim"):
      model.embed(TEXTS, dim=bad)


def test_similarity_is_cosine_of_texts_or_embeddings(readme_run, model):
  x, y = model.embed(TEXTS[:2], side="x"), model.embed(TEXTS, side="y")
  expected = np.asarray(x, np.float64) @ np.asarray(y, np.float64).T  # Unit rows: cosine.
  np.testing.assert_allclose(model.similarity(x, y), expected, atol=1e-5)
  np.testing.assert_allclose(model.similarity(TEXTS[:2], TEXTS), expected, atol=1e-5)
  assert model.similarity(TEXTS[0], TEXTS).shape == (len(TEXTS),)
  assert model.similarity(x[0], y[1]).shape == ()
  np.testing.assert_allclose(readme_run[0]["model"].similarity(
      readme_run[0]["queries"], readme_run[0]["functions"]).shape, (2, 2))


def test_load_converts_a_sentence_transformers_folder_once(readme_run, model, tmp_path):
  export = readme_run[2] / "sentence_transformers"
  converted = embed_jax.load(export, dtype="float32", cache_dir=tmp_path)
  np.testing.assert_allclose(converted.embed(TEXTS), model.embed(TEXTS), atol=1e-5)
  entries = [p for p in tmp_path.joinpath("models").iterdir()]
  assert len(entries) == 1 and converted.directory == entries[0]
  stamp = (entries[0] / "model.json").stat().st_mtime_ns
  again = embed_jax.load(export, cache_dir=tmp_path)
  assert again.directory == entries[0] and (entries[0] / "model.json").stat().st_mtime_ns == stamp


def test_recorded_prompts_are_read_and_applied(readme_run, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  folder = tmp_path / "prompted"
  shutil.copytree(readme_run[2] / "final", folder)
  record = json.loads((folder / "model.json").read_text())
  record["metadata"]["prompts"] = {"x": "Find the function: "}
  (folder / "model.json").write_text(json.dumps(record))
  prompted = embed_jax.load(folder, dtype="float32")
  assert prompted.prompts == {"x": "Find the function: "}
  with_prompt, without = prompted.embed(TEXTS[:1]), prompted.embed(TEXTS[:1], prompt="")
  assert not np.allclose(with_prompt, without, atol=1e-4)
  np.testing.assert_allclose(prompted.embed(TEXTS[:1], side="y"),
                             prompted.embed(TEXTS[:1], side="y", prompt=""), atol=1e-6)


def _mrr_at_10(scores: np.ndarray) -> float:
  """Query i's relevant document is i; ties count against the model."""
  diagonal = np.diag(scores)[:, None]
  ranks = 1 + np.sum(scores >= diagonal, axis=1) - 1  # Docs scoring at least the right one.
  return float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0)))


def test_evaluate_scores_stdlib_code_as_numpy_does(model):
  from embed_jax.data import stdlib_corpus  # pylint: disable=import-outside-toplevel
  with open(stdlib_corpus.corpus_file("stdlib_code", "test"), encoding="utf-8") as f:
    pairs = [json.loads(line) for line in f]
  results = embed_jax.evaluate(model, tasks=["stdlib_code"])["stdlib_code"]
  scores = model.similarity(model.embed([p["x"] for p in pairs], side="x"),
                            model.embed([p["y"] for p in pairs], side="y"))
  assert results["num_queries"] == len(pairs)
  assert results["model"]["mrr@10"] == pytest.approx(_mrr_at_10(scores), abs=1e-6)
  assert 0 <= results["bm25"]["mrr@10"] <= 1


def test_mistakes_are_one_line_user_errors(model, tmp_path):
  with pytest.raises(ApiError, match="side='z'"):
    model.embed(TEXTS, side="z")
  with pytest.raises(ApiError, match="text 1 is int"):
    model.embed(["a", 3])
  with pytest.raises(ApiError, match="no such model directory"):
    embed_jax.load(tmp_path / "missing")
  with pytest.raises(ApiError, match="not the string"):
    gin_bindings("train.steps=3")
  with pytest.raises(ApiError, match="tasks is empty"):
    embed_jax.evaluate(model, tasks=[])
  with pytest.raises(ApiError, match="unknown task 'nope'"):
    embed_jax.evaluate(model, tasks=["nope"], data_dir=tmp_path)
  with pytest.raises(UserError, match="train.stepz"):
    embed_jax.train(["models/tiny.gin"], {"train.stepz": 3}, model_dir=tmp_path / "run")


def test_overrides_become_gin_literals():
  assert gin_bindings({"train.steps": 3, "DataConfig.task": "stdlib_code", "x.y": None,
                       "x.z": [1, 2]}) == [
      "train.steps=3", "DataConfig.task='stdlib_code'", "x.y=None", "x.z=[1, 2]"]
  assert gin_bindings(["train.objective=@ContrastiveObjective"]) == [
      "train.objective=@ContrastiveObjective"]
