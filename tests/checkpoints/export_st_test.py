"""Export to sentence-transformers: `SentenceTransformer(out).encode` equals our embeddings.

Also the inverse mappings (`config_to_hf`, `params_to_hf`) round-trip exactly.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from embed_jax import main
from embed_jax.checkpoints import model_dir
from embed_jax.checkpoints.hf_config import HFConversionError, config_from_hf, config_to_hf
from embed_jax.checkpoints.hf_params import params_from_hf, params_to_hf
from embed_jax.embedding import embed_with_model
from embed_jax.models import BertConfig, DecoderConfig, DualEncoderConfig, build_encoder, init_dual_encoder
from embed_jax.tokenization import text_encoder

TEXTS = ["A man is playing a guitar.", "", "def add(a, b):\n    return a + b",
         "the quick brown fox jumps over the lazy dog " * 3, "Hello!"]
LLAMA = dict(position_embedding="rope", norm="rmsnorm", gated_mlp=True, mlp_activation="silu",
             out_bias=False, mlp_bias=False, num_kv_heads=1)


@pytest.mark.parametrize("config", [
    DecoderConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=2, max_length=16),
    DecoderConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=2, max_length=16,
                  qkv_bias=True, scan_layers=True, **LLAMA),
    BertConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=2, d_ff=32, max_length=16),
], ids=["gpt2", "qwen2_scanned", "bert"])
def test_inverse_mappings_round_trip(config):
  hf = config_to_hf(config)
  assert config_from_hf(hf, scan_layers=config.scan_layers, dropout_rate=config.dropout_rate,
                        attention_dropout_rate=config.attention_dropout_rate).max_length == 16
  shapes = jax.eval_shape(build_encoder(config).init, jax.random.key(1),
                          np.ones((1, 4), np.int32), np.ones((1, 4), np.int32))["params"]
  rng = np.random.RandomState(0)  # every element distinct, so a misplaced one shows
  params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), nn.meta.unbox(shapes))
  back = params_from_hf(config, params_to_hf(config, params))
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_config_without_a_transformers_twin_is_refused():
  with pytest.raises(HFConversionError, match="causal=False"):
    config_to_hf(DecoderConfig(causal=False))


def _check_export(folders, loaded, sides):
  st = pytest.importorskip("sentence_transformers")
  max_length = loaded.metadata.get("max_length")
  for folder, side in zip(folders, sides):
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(
        TEXTS, normalize_embeddings=True)
    ours = embed_with_model(loaded, TEXTS, side=side, max_length=max_length)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    assert np.min(np.sum(ours * theirs, axis=-1)) >= 0.9999


def test_decoder_with_eos_pooling_projection_and_added_delimiters(minilm_tokenizer_json, tmp_path):
  """x is wrapped in tokens the vocabulary lacks, y in `{ }`: two exports, one per side."""
  pytest.importorskip("sentence_transformers")
  templates = {"x_prefix": ("<q>",), "x_suffix": ("</q>",)}
  encoder = text_encoder(tokenizer_json=minilm_tokenizer_json, **templates)
  assert encoder.added_tokens  # ids after the vocabulary
  config = DualEncoderConfig(
      encoder=DecoderConfig(vocab_size=encoder.vocab_size, d_model=16, num_layers=2, num_heads=2,
                            max_length=64, init_std=0.5, **{**LLAMA, "qkv_bias": False}),
      x_delimiter_ids=encoder.delimiter_ids("x"), y_delimiter_ids=encoder.delimiter_ids("y"),
      projection_dim=8)
  _, params = init_dual_encoder(config, jax.random.key(0))
  saved = model_dir.save_model(tmp_path / "model", config, params,
                               tokenizer_path=minilm_tokenizer_json, templates=templates)
  assert main.main(["export", "--model", str(saved), "--out", str(tmp_path / "st")]) == 0
  loaded = model_dir.load_model(saved)
  _check_export([tmp_path / "st" / "x", tmp_path / "st" / "y"], loaded, ["x", "y"])


def test_export_that_would_tokenise_differently_is_refused(minilm_tokenizer_json, tmp_path):
  """transformers rebuilds a qwen2 model's tokenizer from its class, dropping our template."""
  pytest.importorskip("sentence_transformers")
  encoder = text_encoder(tokenizer_json=minilm_tokenizer_json)
  config = DualEncoderConfig(
      encoder=DecoderConfig(vocab_size=encoder.vocab_size, d_model=8, num_layers=1, num_heads=1,
                            max_length=32, qkv_bias=True, **LLAMA),
      x_delimiter_ids=encoder.delimiter_ids("x"), y_delimiter_ids=encoder.delimiter_ids("y"))
  _, params = init_dual_encoder(config, jax.random.key(0))
  saved = model_dir.save_model(tmp_path / "model", config, params, tokenizer_path=minilm_tokenizer_json)
  with pytest.raises(main.CommandLineError, match="Qwen2Tokenizer.*tokenises"):
    main.main(["export", "--model", str(saved), "--out", str(tmp_path / "st")])
  assert not (tmp_path / "st").exists()


def test_minilm_mean_pooling_exports_to_one_folder(converted_minilm, tmp_path):
  pytest.importorskip("sentence_transformers")
  assert main.main(["export", "--model", str(converted_minilm), "--out", str(tmp_path / "st")]) == 0
  assert (tmp_path / "st" / "modules.json").is_file()
  _check_export([tmp_path / "st"], model_dir.load_model(converted_minilm), ["x"])
