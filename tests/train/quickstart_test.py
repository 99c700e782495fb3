"""The quickstart command end to end, shortened: train, evaluate before/after, BM25 table."""

import json
import os

import pytest

from embed_jax import main
from embed_jax.checkpoints import model_dir as model_dir_lib


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
  # The final model directory embeds as it was evaluated.
  model = model_dir_lib.load_model(model_dir / "final")
  assert model.metadata["trained_steps"] == 2
