"""`convert`: HF / sentence-transformers folders and GGUF files -> model directories that embed right.

Oracles: sentence-transformers itself for the packaged MiniLM, and
`transformers` (hidden state at the closing delimiter, L2-normalised) for a
tiny llama, with the embedding table grown the same way on the torch side
where delimiters were added.
"""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from embed_jax import main  # pylint: disable=wrong-import-position
from embed_jax.checkpoints import convert, gguf_file, model_dir  # pylint: disable=wrong-import-position
from embed_jax.checkpoints.hf_config import HFConversionError  # pylint: disable=wrong-import-position
from embed_jax.embedding import embed_with_model  # pylint: disable=wrong-import-position

TEXTS = ["the cat sat", "", "he said: 'x+y'", "t"]


def test_minilm_embeds_exactly_as_sentence_transformers(minilm_folder, converted_minilm, varied_texts):
  st = pytest.importorskip("sentence_transformers")
  loaded = model_dir.load_model(converted_minilm)
  assert loaded.config.pooling == "mean" and loaded.config.normalize
  assert loaded.metadata["added_tokens"] == {} and loaded.metadata["max_length"] == 256
  assert loaded.text_spec.x_prefix == ("[CLS]",) and loaded.text_spec.y_suffix == ("[SEP]",)
  # One batch: one compilation (bucketing by length is tested in embedding_test.py).
  ours = embed_with_model(loaded, varied_texts, max_length=loaded.metadata["max_length"],
                          batch_size=len(varied_texts))
  theirs = st.SentenceTransformer(str(minilm_folder), device="cpu").encode(
      varied_texts, normalize_embeddings=True, batch_size=32)
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  assert np.min(np.sum(ours * theirs, axis=-1)) >= 0.9999


def _wrapped_ids(tokenizer, text, prefix, suffix):
  return [tokenizer.token_to_id(t) for t in prefix] + tokenizer.encode(
      text, add_special_tokens=False).ids + [tokenizer.token_to_id(t) for t in suffix]


def _transformers_eos_embeddings(model, rows):
  """Normalised last hidden state at each row's last real token (right padding)."""
  length = max(map(len, rows))
  tokens = np.zeros((len(rows), length), np.int64)
  mask = np.zeros_like(tokens)
  for i, ids in enumerate(rows):
    tokens[i, :len(ids)], mask[i, :len(ids)] = ids, 1
  with torch.no_grad():
    hidden = model.model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)
                         ).last_hidden_state.numpy()
  pooled = hidden[np.arange(len(rows)), mask.sum(-1) - 1]
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_state, write_gguf, tmp_path_factory):
  return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_llama_state)


def test_hf_folder_with_delimiters_in_the_vocabulary(tiny_llama, tiny_gguf, tmp_path):
  folder, model = tiny_llama
  with pytest.raises(HFConversionError, match="needs a tokenizers tokenizer.json"):
    convert.convert(folder, tmp_path / "no_tokenizer")
  shutil.copytree(folder, tmp_path / "hf")
  tokenizer = gguf_file.read_gguf(tiny_gguf).tokenizer
  tokenizer.save(str(tmp_path / "hf" / "tokenizer.json"))

  loaded = model_dir.load_model(convert.convert(tmp_path / "hf", tmp_path / "model"))
  assert loaded.metadata["added_tokens"] == {}  # [ ] { } are single tokens of the vocabulary
  assert loaded.config.encoder.vocab_size == 100 and loaded.config.pooling == "eos"
  assert loaded.config.y_delimiter_ids == (tokenizer.token_to_id("{"), tokenizer.token_to_id("}"))
  ours = embed_with_model(loaded, TEXTS, side="y")
  theirs = _transformers_eos_embeddings(
      model, [_wrapped_ids(tokenizer, t, ["{"], ["}"]) for t in TEXTS])
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_gguf_with_added_delimiters_grows_the_table(tiny_llama, tiny_gguf, tmp_path):
  _, model = tiny_llama
  out = tmp_path / "model"
  assert main.main(["convert", "--from", str(tiny_gguf), "--out", str(out),
                    "--x_prefix", "<x>", "--x_suffix", "</x>"]) == 0
  record = json.loads((out / "model.json").read_text())
  assert record["metadata"]["added_tokens"] == {"<x>": 100, "</x>": 101}
  assert record["config"]["x_delimiter_ids"] == [100, 101]
  assert "DualEncoderConfig.x_delimiter_ids = [100, 101]" in (out / "model.gin").read_text()
  loaded = model_dir.load_model(out)
  table = np.asarray(loaded.params["encoder"]["token_embed"]["embedding"])
  assert table.shape == (102, 32)
  np.testing.assert_allclose(table[100], table[:100].mean(0), atol=1e-6)
  np.testing.assert_array_equal(table[100], table[101])
  assert loaded.text_encoder.encode_ids([""], "x")[0] == [[100, 101]]

  # The torch oracle: the same model with its table grown by two mean rows.
  model.resize_token_embeddings(102, mean_resizing=False)
  try:
    with torch.no_grad():
      model.model.embed_tokens.weight[100:] = model.model.embed_tokens.weight[:100].mean(0)
    tokenizer = loaded.text_encoder.tokenizer._tokenizer  # pylint: disable=protected-access
    theirs = _transformers_eos_embeddings(
        model, [_wrapped_ids(tokenizer, t, ["<x>"], ["</x>"]) for t in TEXTS])
  finally:
    model.resize_token_embeddings(100)
  np.testing.assert_allclose(embed_with_model(loaded, TEXTS, side="x"), theirs, atol=1e-4, rtol=0)


def test_malformed_sources_give_clear_errors(minilm_folder, tmp_path):
  with pytest.raises(main.CommandLineError, match="no such file or folder"):
    main.main(["convert", "--from", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
  broken = tmp_path / "broken"
  shutil.copytree(minilm_folder, broken)
  data = (broken / "model.safetensors").read_bytes()
  (broken / "model.safetensors").write_bytes(data[:1000])
  with pytest.raises(HFConversionError, match="model.safetensors: damaged or truncated"):
    convert.convert(broken, tmp_path / "o")
  (tmp_path / "fake.gguf").write_bytes(b"GGML" + bytes(100))
  with pytest.raises(HFConversionError, match="not a GGUF file"):
    convert.convert(tmp_path / "fake.gguf", tmp_path / "o")
