"""Reading HF folders (single, sharded, pytorch .bin, bfloat16) and the errors of the conversion."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from embed_jax.checkpoints.hf_config import HFConversionError, config_from_hf  # pylint: disable=wrong-import-position
from embed_jax.checkpoints.hf_files import read_hf_tensors  # pylint: disable=wrong-import-position
from embed_jax.checkpoints.hf_params import params_from_hf  # pylint: disable=wrong-import-position
from embed_jax.models.stack import stack_layer_params  # pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def llama():
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
  return transformers.LlamaModel(config).eval()


@pytest.fixture(scope="module")
def state(llama):
  return {name: t.detach().numpy().copy() for name, t in llama.state_dict().items()}


@pytest.fixture(scope="module")
def expected_params(llama, state):
  return params_from_hf(config_from_hf(llama.config.to_dict()), state)


def _assert_trees_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    if isinstance(a[key], dict):
      _assert_trees_equal(a[key], b[key])
    else:
      np.testing.assert_array_equal(a[key], b[key])


def test_sharded_safetensors_are_read_through_the_index(llama, state, expected_params, tmp_path):
  llama.save_pretrained(tmp_path, max_shard_size="20KB")
  shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
  assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
  tensors = read_hf_tensors(tmp_path)
  assert sorted(tensors) == sorted(state)
  config = config_from_hf(json.loads((tmp_path / "config.json").read_text()))
  _assert_trees_equal(params_from_hf(config, tensors), expected_params)


def test_pytorch_bin_is_the_fallback(llama, expected_params, tmp_path):
  llama.config.save_pretrained(tmp_path)
  torch.save(llama.state_dict(), tmp_path / "pytorch_model.bin")
  config = config_from_hf(json.loads((tmp_path / "config.json").read_text()))
  _assert_trees_equal(params_from_hf(config, read_hf_tensors(tmp_path)), expected_params)


def test_bfloat16_safetensors_are_read_and_cast(state, tmp_path):
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  save_file({k: torch.tensor(v).to(torch.bfloat16) for k, v in state.items()},
            tmp_path / "model.safetensors")
  tensors = read_hf_tensors(tmp_path)
  embedding = tensors["embed_tokens.weight"]
  assert embedding.dtype.name == "bfloat16"
  np.testing.assert_allclose(embedding.astype(np.float32), state["embed_tokens.weight"], rtol=1e-2)


def test_folder_without_weights_names_what_it_expected(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(HFConversionError, match=r"no weights in .*model.safetensors.*found \['config.json'\]"):
    read_hf_tensors(tmp_path)


def test_missing_tensor_is_named(llama, state):
  config = config_from_hf(llama.config.to_dict())
  partial = {k: v for k, v in state.items() if k != "layers.1.mlp.up_proj.weight"}
  with pytest.raises(HFConversionError,
                     match=r"'layers.1.mlp.up_proj.weight' \(for our param layer_1/mlp/wi_up/kernel\) is missing"):
    params_from_hf(config, partial)


def test_wrong_shape_names_tensor_and_expected_shape(llama, state):
  config = config_from_hf(llama.config.to_dict())
  broken = dict(state, **{"layers.0.self_attn.k_proj.weight": np.zeros((32, 32), np.float32)})
  with pytest.raises(HFConversionError,
                     match=r"'layers.0.self_attn.k_proj.weight' has shape \(32, 32\), expected \(16, 32\)"):
    params_from_hf(config, broken)


def test_prefixed_names_and_heads_are_handled(llama, state, expected_params):
  config = config_from_hf(llama.config.to_dict())
  prefixed = {"model." + k: v for k, v in state.items()}
  prefixed["lm_head.weight"] = state["embed_tokens.weight"]
  _assert_trees_equal(params_from_hf(config, prefixed), expected_params)


def test_scanned_layout_stacks_the_layers(llama, state, expected_params):
  config = config_from_hf(llama.config.to_dict(), scan_layers=True)
  _assert_trees_equal(params_from_hf(config, state),
                      stack_layer_params(expected_params, config.num_layers))


def test_unknown_architecture_names_supported_ones():
  with pytest.raises(HFConversionError,
                     match=r"model_type='t5'.*\('bert', 'gpt2', 'llama', 'mistral', 'qwen2'\)"):
    config_from_hf({"model_type": "t5"})


LLAMA = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
             num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize("fields,message", [
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5}), "rope type 'llama3'"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope type 'linear'"),
    (dict(hidden_act="gelu_10"), "hidden_act='gelu_10'"),
    (dict(model_type="qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1),
     "on some layers only"),
    (dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=8,
          scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
    (dict(model_type="bert", max_position_embeddings=8,
          position_embedding_type="relative_key"), "position_embedding_type='relative_key'"),
    (dict(model_type="gpt2"), "gpt2 config lacks the field 'n_embd'"),
])
def test_unsupported_fields_are_rejected(fields, message):
  with pytest.raises(HFConversionError, match=message):
    config_from_hf(dict(LLAMA, **fields))


def test_known_fields_map_to_our_config():
  old_style = config_from_hf(dict(LLAMA, rope_theta=1e5, rope_scaling=None, num_key_value_heads=2,
                                  attention_bias=True))
  assert (old_style.rope_theta, old_style.kv_heads, old_style.head_size) == (1e5, 2, 8)
  assert old_style.qkv_bias and old_style.out_bias and not old_style.mlp_bias
  qwen2 = config_from_hf(dict(LLAMA, model_type="qwen2"))
  assert qwen2.qkv_bias and not qwen2.out_bias and qwen2.sliding_window is None
  windowed_qwen2 = config_from_hf(dict(LLAMA, model_type="qwen2", use_sliding_window=True,
                                        sliding_window=16, max_window_layers=0))
  assert windowed_qwen2.sliding_window == 16
  mistral = config_from_hf(dict(LLAMA, model_type="mistral", sliding_window=4096))
  assert mistral.sliding_window == 4096
  assert config_from_hf(dict(LLAMA), dtype="bfloat16").dtype == "bfloat16"
  gpt2 = config_from_hf(transformers.GPT2Config().to_dict(), dropout_rate=0.0,
                        attention_dropout_rate=0.0)
  assert (gpt2.d_model, gpt2.num_layers, gpt2.num_heads, gpt2.ff_size, gpt2.mlp_activation) == (
      768, 12, 12, 3072, "gelu_tanh")
