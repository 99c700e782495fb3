"""A converted causal Llama made bidirectional: equals transformers with the causal mask removed.

Also: `DecoderConfig.causal = False` (and latent pooling) set in gin over a model that
training starts from, recorded in the model directory and honoured when it is loaded.
"""

import dataclasses

import gin
import jax
import numpy as np
import pytest

from embed_jax.checkpoints import hf_files, model_dir
from embed_jax.errors import ConfigError
from embed_jax.models import build_encoder, build_dual_encoder

torch = pytest.importorskip("torch")

MASK = np.array([[1] * 10, [1] * 6 + [0] * 4, [0] * 3 + [1] * 7], np.int32)
TOKENS = np.random.RandomState(0).randint(3, 100, size=MASK.shape).astype(np.int32)


def _transformers_bidirectional(model, tokens, mask):
  """transformers' LlamaModel with every real key visible to every query (no causal mask)."""
  base = model.model
  allowed = torch.tensor(mask, dtype=torch.bool)[:, None, None, :].expand(-1, 1, mask.shape[1], -1)
  bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  base.config._attn_implementation = "eager"  # pylint: disable=protected-access
  for layer in base.layers:
    layer.self_attn.is_causal = False
  with torch.no_grad():
    out = base(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=bias,
               position_ids=torch.tensor(positions, dtype=torch.long))
  return out.last_hidden_state.numpy()


def test_bidirectional_llama_equals_transformers_without_the_causal_mask(tiny_llama):
  folder, model = tiny_llama
  config, params = hf_files.load_hf(folder)
  assert config.causal
  config = dataclasses.replace(config, causal=False)
  ours = np.asarray(jax.jit(build_encoder(config).apply)({"params": params}, TOKENS, MASK))
  theirs = _transformers_bidirectional(model, TOKENS, MASK)
  real = MASK.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)
  causal = np.asarray(jax.jit(build_encoder(dataclasses.replace(config, causal=True)).apply)(
      {"params": params}, TOKENS, MASK))
  assert np.abs(causal[0, :5] - theirs[0, :5]).max() > 1e-2  # The mask really was removed.


@pytest.fixture(name="converted_llama")
def _converted_llama(tiny_llama, minilm_tokenizer_json, tmp_path):
  """The tiny llama converted into a model directory (with a tokenizer of its vocabulary size)."""
  folder, _ = tiny_llama
  config, params = hf_files.load_hf(folder)
  from embed_jax.models import DualEncoderConfig  # pylint: disable=import-outside-toplevel
  from embed_jax.tokenization import text_encoder  # pylint: disable=import-outside-toplevel
  encoder = text_encoder(tokenizer_json=minilm_tokenizer_json)
  config = dataclasses.replace(config, vocab_size=encoder.vocab_size)
  params = dict(params)
  rng = np.random.default_rng(0)
  params["token_embed"] = {"embedding": rng.normal(
      size=(encoder.vocab_size, config.d_model)).astype(np.float32)}
  dual = DualEncoderConfig(encoder=config, pooling="mean")
  return model_dir.save_model(tmp_path / "causal", dual, {"encoder": params, "log_temp": np.float32(1)},
                              tokenizer_path=minilm_tokenizer_json)


def test_causal_false_and_latent_pooling_over_a_pretrained_model(converted_llama, tmp_path):
  record = model_dir.read_model_record(converted_llama)
  stored = model_dir.config_from_json(record["config"])
  gin.clear_config()
  try:
    gin.bind_parameter("DecoderConfig.causal", False)
    gin.bind_parameter("DualEncoderConfig.pooling", "latent_attention")
    gin.bind_parameter("DualEncoderConfig.latent_attention_latents", 8)
    gin.bind_parameter("DualEncoderConfig.latent_attention_heads", 2)
    config = model_dir.with_gin_overrides(stored, "train.init_from")
    gin.bind_parameter("DualEncoderConfig.latent_attention_heads", 5)
    with pytest.raises(ConfigError, match="train.init_from: .*latent_attention_heads=5"):
      model_dir.with_gin_overrides(stored, "train.init_from")
  finally:
    gin.clear_config()
  assert not config.encoder.causal and config.pooling == "latent_attention"
  module = build_dual_encoder(config)
  with pytest.raises(model_dir.ModelDirError, match="latent_pool"):
    model_dir.load_params(converted_llama, module)
  params = model_dir.load_params(converted_llama, module, new_params_rng=jax.random.key(0))
  stored_params = model_dir.load_params(converted_llama, build_dual_encoder(stored))
  jax.tree.map(np.testing.assert_array_equal, params["encoder"], stored_params["encoder"])
  assert params["latent_pool"]["latents"].shape == (8, config.encoder.d_model)

  saved = model_dir.save_model(tmp_path / "bidirectional", config, params,
                               tokenizer_path=converted_llama / "tokenizer.json")
  loaded = model_dir.load_model(saved)
  assert loaded.config == config and not loaded.module.config.encoder.causal
