"""Training with a task's instructions (latent pooling, 2D Matryoshka, packed): the data carries
the prompt, the final model stores it."""

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
          f"p/file_task.x_prompt='{PROMPT}'", "DualEncoderConfig.pooling='latent_attention'",
          "DualEncoderConfig.latent_attention_latents=16", "DualEncoderConfig.latent_attention_heads=4",
          "DualEncoderConfig.matryoshka_layers=((1, 16), (2, 32))"]
  summary = h.train_in_process(tmp_path / "run", minilm_tokenizer_json, data, steps=2)
  assert tasks.task_prompts("p") == {"x": PROMPT}
  loaded = model_dir.load_model(summary["final_model"])
  assert loaded.prompts == {"x": PROMPT, "y": ""}
  assert loaded.config.pooling == "latent_attention" and loaded.config.matryoshka_layers
  assert "loss_layer1_dim16" in h.metrics(tmp_path / "run")[2]
  with_prompt = embed_with_model(loaded, ["query 3"], side="x")
  explicit = embed_with_model(loaded, ["query 3"], side="x", prompt=PROMPT)
  np.testing.assert_array_equal(with_prompt, explicit)


def test_prompts_go_before_each_text_and_a_mixture_needs_one_prompt_per_side(tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from embed_jax.data import preprocessors, tasks  # pylint: disable=import-outside-toplevel
  from embed_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  ds = tf.data.Dataset.from_tensors({"x": "q", "y": "d", "negatives": tf.constant(["n1", "n2"])})
  out = next(iter(preprocessors.prepend_prompts(ds, {"x": PROMPT, "y": "doc: "})))
  assert out["x"].numpy().decode() == PROMPT + "q" and out["y"].numpy().decode() == "doc: d"
  assert [n.decode() for n in out["negatives"].numpy()] == ["doc: n1", "doc: n2"]
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text(json.dumps({"x": "a", "y": "b"}) + "\n")
  tasks.file_task(name="with_prompt", train=str(pairs), x_prompt=PROMPT)
  tasks.file_task(name="without_prompt", train=str(pairs))
  tasks.mixture(name="mixed_prompts", tasks=[("with_prompt", 1.0), ("without_prompt", 1.0)])
  with pytest.raises(ConfigError, match="mixture 'mixed_prompts' have different prompts"):
    tasks.task_prompts("mixed_prompts")
  assert tasks.task_prompts(tasks.prompted_task(name="code_p", task="stdlib_code",
                                                x_prompt=PROMPT)) == {"x": PROMPT}
