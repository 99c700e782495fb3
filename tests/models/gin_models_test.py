"""Every configs/models/*.gin builds a dual encoder; the pretrained shapes match `transformers`."""

import math

import jax
import pytest

from embed_jax import gin_config
from embed_jax.models import (
    BertConfig, DecoderConfig, DualEncoder, DualEncoderConfig, build_encoder)
from embed_jax.models.sharded_init import abstract_params, example_inputs

MODEL_FILES = sorted(p.name for p in (gin_config.configs_dir() / "models").glob("*.gin"))


def _load(name):
  gin_config.parse([f"models/{name}"])
  return DualEncoderConfig()


def test_the_expected_model_files_are_shipped():
  assert {"gpt2_small.gin", "gpt2_medium.gin", "gpt2_large.gin", "gpt2_xl.gin", "cpt_s.gin",
          "cpt_m.gin", "cpt_l.gin", "cpt_xl.gin", "smollm2_135m.gin", "minilm_l6.gin",
          "tiny.gin"} <= set(MODEL_FILES)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_model_file_builds_a_dual_encoder(name):
  config = _load(name)
  assert isinstance(config.encoder, (DecoderConfig, BertConfig))
  assert isinstance(DualEncoder(config), DualEncoder)


@pytest.mark.parametrize("name,d_model,num_layers,num_heads", [
    ("cpt_s.gin", 1024, 24, 16), ("cpt_m.gin", 2048, 24, 16), ("cpt_l.gin", 4096, 32, 32),
    ("cpt_xl.gin", 12288, 96, 96)])
def test_cpt_shapes(name, d_model, num_layers, num_heads):
  encoder = _load(name).encoder
  assert (encoder.d_model, encoder.num_layers, encoder.num_heads, encoder.vocab_size) == (
      d_model, num_layers, num_heads, 50257)


def _hf_parameter_count(hf_config, model_class):
  """Parameters of the `transformers` model, built on the meta device (no memory, no init)."""
  torch = pytest.importorskip("torch")
  with torch.device("meta"):
    model = model_class(hf_config)
  return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("pooler."))


def _hf_models():
  transformers = pytest.importorskip("transformers")
  return {
      "gpt2_small.gin": (transformers.GPT2Config(), transformers.GPT2Model),
      "smollm2_135m.gin": (transformers.LlamaConfig(
          vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
          num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
          transformers.LlamaModel),
      "minilm_l6.gin": (transformers.BertConfig(
          hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
          transformers.BertModel),
  }


@pytest.mark.parametrize("name", ["gpt2_small.gin", "smollm2_135m.gin", "minilm_l6.gin"])
def test_parameter_count_matches_transformers(name):
  hf_config, model_class = _hf_models()[name]
  encoder = build_encoder(_load(name).encoder)
  shapes = abstract_params(encoder, example_inputs(encoder, 1, 4))
  ours = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  assert ours == _hf_parameter_count(hf_config, model_class)


def test_run_bindings_complete_a_model_file():
  gin_config.parse(["models/tiny.gin"], [
      "DualEncoderConfig.x_delimiter_ids = (58, 60)", "DualEncoderConfig.y_delimiter_ids = (90, 92)",
      "DualEncoderConfig.projection_dim = 16", "DecoderConfig.dtype = 'bfloat16'",
      "DecoderConfig.remat_policy = 'full'"])
  config = DualEncoderConfig()
  assert (config.closing_id("x"), config.closing_id("y"), config.projection_dim) == (60, 92, 16)
  assert (config.encoder.dtype, config.encoder.remat_policy, config.encoder.d_model) == (
      "bfloat16", "full", 32)
