"""Instructions (prompts) left out of pooling, applied by `embed`, and the export of today's
model features: a bidirectional Llama with latent-attention pooling and prompts loads in
sentence-transformers (custom modules, trust_remote_code) with matching embeddings."""

import json

import jax
import numpy as np
import pytest

from embed_jax import main
from embed_jax.checkpoints import model_dir
from embed_jax.embedding import PromptError, embed_with_model
from embed_jax.models import DecoderConfig, DualEncoder, DualEncoderConfig, init_dual_encoder
from embed_jax.tokenization import text_encoder

TEXTS = ["A man is playing a guitar.", "", "def add(a, b):\n    return a + b", "Hello!"]
PROMPT = "Given a question, retrieve code that answers it: "
LLAMA = dict(position_embedding="rope", norm="rmsnorm", gated_mlp=True, mlp_activation="silu",
             qkv_bias=False, out_bias=False, mlp_bias=False, num_kv_heads=1)


def _save(tmp_path, tokenizer_json, pooling, causal=True, prompts=None, **extra):
  encoder = text_encoder(tokenizer_json=tokenizer_json)
  config = DualEncoderConfig(
      encoder=DecoderConfig(vocab_size=encoder.vocab_size, d_model=16, num_layers=2, num_heads=2,
                            max_length=64, init_std=0.5, causal=causal, **LLAMA),
      pooling=pooling, x_delimiter_ids=encoder.delimiter_ids("x"),
      y_delimiter_ids=encoder.delimiter_ids("y"), **extra)
  _, params = init_dual_encoder(config, jax.random.key(0))
  return model_dir.save_model(tmp_path / "model", config, params, tokenizer_path=tokenizer_json,
                              prompts=prompts)


def test_prompt_tokens_are_left_out_of_mean_pooling(minilm_tokenizer_json, tmp_path):
  saved = _save(tmp_path, minilm_tokenizer_json, "mean", prompts={"x": PROMPT})
  loaded = model_dir.load_model(saved)
  assert loaded.prompts == {"x": PROMPT, "y": ""}
  encoder = loaded.text_encoder
  prompt_ids = encoder.tokenizer.encode_batch([PROMPT])[0]
  ids, _ = encoder.encode_ids([PROMPT + TEXTS[0]], "x")
  tokens = np.array(ids, np.int32)
  hidden = np.asarray(loaded.module.apply({"params": loaded.params}, tokens, np.ones_like(tokens),
                                          method=lambda m, t, k: m.encoder(t, k)))[0]
  start = 1 + len(prompt_ids)  # After "[" and the prompt's tokens: the text's own.
  assert list(tokens[0, 1:start]) == prompt_ids
  expected = hidden[start:].mean(0)
  expected /= np.linalg.norm(expected)
  got = embed_with_model(loaded, TEXTS[:1], side="x")[0]
  np.testing.assert_allclose(got, expected, atol=2e-5)
  without = embed_with_model(loaded.with_options(prompt=""), TEXTS[:1], side="x")[0]
  assert np.abs(without - got).max() > 1e-3

  inputs = tmp_path / "texts.txt"
  inputs.write_text(TEXTS[0] + "\n")
  first_layer = embed_with_model(loaded.with_options(layers=1), TEXTS[:1], side="x")[0]
  for flags, want in (([], got), (["--prompt", ""], without), (["--layers", "1"], first_layer)):
    out = tmp_path / f"out{'_'.join(flags)}.npy"
    assert main.main(["embed", "--model", str(saved), "--input", str(inputs), "--output", str(out),
                      "--no_progress", *flags]) == 0
    np.testing.assert_allclose(np.load(out)[0], want, atol=1e-6)
  with pytest.raises(PromptError, match="prompt of side x .* leaving no room for text in max_length 8"):
    embed_with_model(loaded, TEXTS[:1], side="x", max_length=8)


def test_bidirectional_latent_pooling_with_prompts_exports(minilm_tokenizer_json, tmp_path):
  st = pytest.importorskip("sentence_transformers")
  saved = _save(tmp_path, minilm_tokenizer_json, "latent_attention", causal=False,
                prompts={"x": PROMPT}, latent_attention_latents=8, latent_attention_heads=2,
                projection_dim=8)
  assert main.main(["export", "--model", str(saved), "--out", str(tmp_path / "st")]) == 0
  loaded = model_dir.load_model(saved)
  folder = tmp_path / "st" / "x"
  types = [m["type"] for m in json.loads((folder / "modules.json").read_text())]
  assert types[:2] == ["embed_jax_modules.BidirectionalTransformer",
                       "embed_jax_modules.LatentAttentionPooling"]
  assert (folder / "embed_jax_modules.py").is_file()
  model = st.SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
  assert model.prompts["x"] == PROMPT and model.default_prompt_name == "x"
  ours = embed_with_model(loaded, TEXTS, side="x")
  for theirs in (model.encode(TEXTS, prompt_name="x"), model.encode(TEXTS)):
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
  plain = model.encode(TEXTS, prompt="")
  np.testing.assert_allclose(plain, embed_with_model(loaded.with_options(prompt=""), TEXTS),
                             atol=1e-4, rtol=0)
  y_model = st.SentenceTransformer(str(tmp_path / "st" / "y"), device="cpu", trust_remote_code=True)
  np.testing.assert_allclose(y_model.encode(TEXTS), embed_with_model(loaded, TEXTS, side="y"),
                             atol=1e-4, rtol=0)


def test_an_export_that_does_not_reproduce_is_refused(minilm_tokenizer_json, tmp_path, monkeypatch):
  pytest.importorskip("sentence_transformers")
  from embed_jax.checkpoints import export_st  # pylint: disable=import-outside-toplevel
  saved = _save(tmp_path, minilm_tokenizer_json, "mean")
  monkeypatch.setattr(export_st, "ST_POOLING", {**export_st.ST_POOLING, "mean": "max"})
  with pytest.raises(export_st.ExportError, match="reproduces the model's embeddings only to cosine"):
    export_st.export(saved, tmp_path / "st", side="x")
  assert not (tmp_path / "st").exists() or not any((tmp_path / "st").iterdir())
