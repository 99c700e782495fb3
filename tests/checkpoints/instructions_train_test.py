"""Training with a task's instructions: the data carries the prompt, the final model stores it."""

import json

import numpy as np
import pytest

from embed_jax.checkpoints import model_dir
from embed_jax.embedding import embed_with_model
from tests.train import run_helpers as h

PROMPT = "Given a question, retrieve the answer: "


@pytest.mark.slow  # A whole (2-step) training run on the data pipeline.
def test_file_task_prompts_train_packed_and_are_stored(tmp_path, minilm_tokenizer_json):
  import embed_jax.data.pipeline  # pylint: disable=import-outside-toplevel,unused-import  # gin names
  from embed_jax.data import tasks  # pylint: disable=import-outside-toplevel
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("".join(json.dumps({"x": f"query {i}", "y": f"answer {i}"}) + "\n"
                           for i in range(32)))
  data = ["train.data_source='pipeline'", "train.eval_validation_batches=0",
          "DataConfig.batch_size=16", "DataConfig.x_length=24", "DataConfig.y_length=16",
          "DataConfig.task=@p/file_task()", "p/file_task.name='p'", f"p/file_task.train='{pairs}'",
          f"p/file_task.x_prompt='{PROMPT}'", "DualEncoderConfig.pooling='mean'"]
  summary = h.train_in_process(tmp_path / "run", minilm_tokenizer_json, data, steps=2)
  assert tasks.task_prompts("p") == {"x": PROMPT}
  loaded = model_dir.load_model(summary["final_model"])
  assert loaded.prompts == {"x": PROMPT, "y": ""}
  with_prompt = embed_with_model(loaded, ["query 3"], side="x")
  explicit = embed_with_model(loaded, ["query 3"], side="x", prompt=PROMPT)
  np.testing.assert_array_equal(with_prompt, explicit)
