"""Model directories: save -> load round trip (one device and a sharded mesh), and clear errors."""

import json

import jax
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.checkpoints import model_dir
from embed_jax.models import DecoderConfig, DualEncoderConfig, init_dual_encoder
from embed_jax.tokenization import text_encoder


@pytest.fixture(scope="module")
def tiny(minilm_tokenizer_json):
  """(config, params, tokenizer path) of a tiny eos-pooled decoder on the MiniLM vocabulary."""
  encoder = text_encoder(tokenizer_json=minilm_tokenizer_json)
  config = DualEncoderConfig(
      encoder=DecoderConfig(vocab_size=encoder.vocab_size, d_model=16, num_layers=1, num_heads=2,
                            max_length=32),
      x_delimiter_ids=encoder.delimiter_ids("x"), y_delimiter_ids=encoder.delimiter_ids("y"),
      projection_dim=8)
  _, params = init_dual_encoder(config, jax.random.key(0))
  return config, params, minilm_tokenizer_json


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
  config, params, tokenizer = tiny
  return model_dir.save_model(tmp_path_factory.mktemp("m") / "model", config, params,
                              tokenizer_path=tokenizer, metadata={"source": "test"})


def _assert_same(a, b):
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)


def test_round_trip_on_one_device(tiny, saved):
  config, params, _ = tiny
  loaded = model_dir.load_model(saved)
  assert loaded.config == config
  assert loaded.metadata == {"source": "test"}
  assert loaded.text_encoder.delimiter_ids("y") == config.y_delimiter_ids
  _assert_same(loaded.params, params)


def test_round_trip_onto_a_sharded_mesh(tiny, saved):
  _, params, _ = tiny
  mesh = partitioning.create_mesh(data=2, fsdp=2, tensor=2)
  loaded = model_dir.load_model(saved, mesh=mesh)
  _assert_same(loaded.params, params)
  embed = loaded.params["encoder"]["token_embed"]["embedding"]
  assert embed.sharding.mesh.shape == mesh.shape
  assert not embed.sharding.is_fully_replicated


def test_gin_file_rebuilds_the_same_config(tiny, saved):
  import gin  # pylint: disable=import-outside-toplevel
  from embed_jax import gin_config  # pylint: disable=import-outside-toplevel
  gin_config.parse([str(saved / model_dir.GIN_FILE)], [])
  assert DualEncoderConfig(encoder=DecoderConfig()) == tiny[0]
  assert text_encoder().delimiter_ids("x") == tiny[0].x_delimiter_ids
  gin.clear_config()


def test_refuses_to_overwrite_a_non_empty_directory(tiny, saved):
  config, params, tokenizer = tiny
  with pytest.raises(model_dir.ModelDirError, match="not empty"):
    model_dir.save_model(saved, config, params, tokenizer_path=tokenizer)


def test_missing_and_malformed_directories_are_named(tmp_path, saved):
  with pytest.raises(model_dir.ModelDirError, match="not a model directory"):
    model_dir.load_model(tmp_path)
  (tmp_path / model_dir.CONFIG_FILE).write_text("{not json")
  with pytest.raises(model_dir.ModelDirError, match="model.json: not valid JSON"):
    model_dir.load_model(tmp_path)
  record = json.loads((saved / model_dir.CONFIG_FILE).read_text())
  record["config"]["encoder"]["type"] = "RNNConfig"
  (tmp_path / model_dir.CONFIG_FILE).write_text(json.dumps(record))
  with pytest.raises(model_dir.ModelDirError, match="'RNNConfig'"):
    model_dir.load_model(tmp_path)


def test_params_that_do_not_match_the_config_are_reported(tiny, saved, tmp_path):
  config, params, tokenizer = tiny
  other = tmp_path / "other"
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copytree(saved, other)
  record = json.loads((other / model_dir.CONFIG_FILE).read_text())
  record["config"]["projection_dim"] = 4
  (other / model_dir.CONFIG_FILE).write_text(json.dumps(record))
  with pytest.raises(model_dir.ModelDirError, match="params do not match"):
    model_dir.load_model(other)
