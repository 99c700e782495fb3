"""A short training run distilling a teacher's scores read from a pair file (padded and packed)."""

import json

import numpy as np
from embed_jax.data import pipeline, tasks  # noqa: F401  # Registers DataConfig and file_task with gin.
from tests.train import run_helpers as h


def test_distill_from_file_scores_trains(tmp_path, minilm_tokenizer_json):
  """Packed batches (the default): a missing negative is a placeholder its score must not reach."""
  rng = np.random.default_rng(0)
  path = tmp_path / "pairs.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for i in range(32):
      negatives = [f"unrelated text {i} {k}" for k in range(i % 3)]  # Some rows miss negatives.
      f.write(json.dumps({"x": f"query number {i}", "y": f"answer number {i}", "n": negatives,
                          "s": [float(v) for v in rng.normal(size=1 + len(negatives))]}) + "\n")
  extra = ["train.data_source='pipeline'", "train.steps=2",
           "DataConfig.task=@pairs/file_task()", "pairs/file_task.name='distill_pairs'",
           f"pairs/file_task.train='{path}'", "pairs/file_task.negatives_field='n'",
           "pairs/file_task.teacher_scores_field='s'",
           "DataConfig.batch_size=16", "DataConfig.x_length=16", "DataConfig.y_length=16",
           "DataConfig.num_negatives=2",
           "ContrastiveObjective.distill='kl'", "ContrastiveObjective.distill_weight=0.5",
           f"pairs/file_task.validation='{path}'", "StepConfig.pack=True"]
  h.train_in_process(tmp_path / "run", minilm_tokenizer_json, extra, steps=2)
  steps = h.metrics(tmp_path / "run")
  assert sorted(steps) == [1, 2]
  for record in steps.values():
    assert np.isfinite(record["distill_loss"]) and record["distill_loss"] >= 0
    assert np.isfinite(record["loss"])
