"""Reading a llama.cpp `.gguf` file: config, dequantised tensors and tokenizer.

The file is read with the `gguf` package (`GGUFReader`, memory-mapped) and
each tensor dequantised with `gguf.dequantize` when it is first used (F32, F16,
BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants the package supports).
Tensors are renamed to the `transformers` names that `hf_params` consumes, so
the GGUF path shares the HF path's shape checks and param layout:

    token_embd                  model.embed_tokens
    blk.N.attn_q / attn_k       model.layers.N.self_attn.q_proj / k_proj  (row permutation undone)
    blk.N.attn_v / attn_output  model.layers.N.self_attn.v_proj / o_proj
    blk.N.ffn_gate / up / down  model.layers.N.mlp.gate_proj / up_proj / down_proj
    blk.N.attn_norm / ffn_norm  model.layers.N.input_layernorm / post_attention_layernorm
    output_norm / output        model.norm / lm_head

llama.cpp's converter permutes the rows of each head of Q and K from the
"rotate halves" RoPE layout of `transformers` to interleaved pairs; reading
undoes it. The config comes from the `llama.*` metadata and the tokenizer from
the embedded vocabulary (`tokenizer.ggml.model` "gpt2": byte-level BPE).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from embed_jax.checkpoints.hf_config import EncoderConfig, HFConversionError, config_from_hf
from embed_jax.checkpoints.hf_params import params_from_hf

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF tensor name (with N for the block) -> transformers name.
_LLAMA_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.N.attn_q.weight": "model.layers.N.self_attn.q_proj.weight",
    "blk.N.attn_k.weight": "model.layers.N.self_attn.k_proj.weight",
    "blk.N.attn_v.weight": "model.layers.N.self_attn.v_proj.weight",
    "blk.N.attn_output.weight": "model.layers.N.self_attn.o_proj.weight",
    "blk.N.ffn_gate.weight": "model.layers.N.mlp.gate_proj.weight",
    "blk.N.ffn_up.weight": "model.layers.N.mlp.up_proj.weight",
    "blk.N.ffn_down.weight": "model.layers.N.mlp.down_proj.weight",
    "blk.N.attn_norm.weight": "model.layers.N.input_layernorm.weight",
    "blk.N.ffn_norm.weight": "model.layers.N.post_attention_layernorm.weight",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.")

# `tokenizer.ggml.pre` -> the regex that splits text before byte-level BPE
# (None: the GPT-2 split built into the ByteLevel pre-tokenizer).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS: dict[str, str | None] = {
    "default": None, "gpt2": None, "gpt-2": None, "smollm": None,
    "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's Q/K permutation of weight [heads * head_dim, ...].

  llama.cpp stores, within each head, row (2i + j) of the interleaved layout
  from row (j * head_dim/2 + i) of the `transformers` layout; this returns the
  latter.
  """
  rows = weight.shape[0]
  return (weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
          .swapaxes(1, 2).reshape(weight.shape))


def _open(path: str | Path):
  import gguf  # pylint: disable=import-outside-toplevel
  path = Path(path)
  if not path.is_file():
    raise HFConversionError(f"{path}: GGUF file not found")
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != GGUF_MAGIC:
    raise HFConversionError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
  try:
    return gguf.GGUFReader(str(path))
  except (ValueError, IndexError, OSError) as e:
    raise HFConversionError(f"{path}: damaged GGUF file: {e}") from e


def _metadata(reader) -> dict[str, Any]:
  """Every key-value field of the file as Python values (strings, numbers, lists)."""
  return {name: field.contents() for name, field in reader.fields.items()
          if not name.startswith("GGUF.")}


def _hf_config(meta: Mapping[str, Any], path: Path, vocab_rows: int) -> dict[str, Any]:
  """A `transformers`-style config dict from the file's `llama.*` metadata."""
  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise HFConversionError(
        f"{path}: unsupported GGUF architecture {arch!r}; supported: {SUPPORTED_ARCHITECTURES}")

  def get(key: str, default: Any = KeyError) -> Any:
    if f"{arch}.{key}" in meta:
      return meta[f"{arch}.{key}"]
    if default is KeyError:
      raise HFConversionError(f"{path}: metadata key {arch}.{key} is missing")
    return default

  if get("rope.scaling.type", "none") not in ("none", None):
    raise HFConversionError(
        f"{path}: {arch}.rope.scaling.type={get('rope.scaling.type')!r} is not supported")
  num_heads = get("attention.head_count")
  d_model = get("embedding_length")
  return {
      "model_type": "llama",
      "vocab_size": get("vocab_size", vocab_rows),
      "hidden_size": d_model,
      "num_hidden_layers": get("block_count"),
      "num_attention_heads": num_heads,
      "num_key_value_heads": get("attention.head_count_kv", num_heads),
      "head_dim": get("attention.key_length", get("rope.dimension_count", d_model // num_heads)),
      "intermediate_size": get("feed_forward_length"),
      "max_position_embeddings": get("context_length"),
      "rope_theta": float(get("rope.freq_base", 10000.0)),
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
      "hidden_act": "silu",
  }


class GGUFTensors(Mapping):
  """Lazy `transformers` name -> float32 array over a GGUF file's tensors.

  Each access dequantises one tensor; Q and K rows are un-permuted. Tensors
  without a `transformers` counterpart are refused up front, by GGUF name.
  """

  def __init__(self, reader, path: Path, num_heads: int, num_kv_heads: int):
    self._path = path
    self._heads = {"attn_q": num_heads, "attn_k": num_kv_heads}
    self._tensors = {}
    for tensor in reader.tensors:
      match = _BLOCK.match(tensor.name)
      key = _BLOCK.sub("blk.N.", tensor.name)
      if key not in _LLAMA_NAMES:
        raise HFConversionError(
            f"{path}: tensor {tensor.name!r} is not one this reader knows for a llama model "
            f"(known: {sorted(_LLAMA_NAMES)}); the model is not a plain llama")
      name = _LLAMA_NAMES[key].replace(".N.", f".{match.group(1)}.") if match else _LLAMA_NAMES[key]
      self._tensors[name] = tensor

  def __getitem__(self, name: str) -> np.ndarray:
    import gguf  # pylint: disable=import-outside-toplevel
    tensor = self._tensors[name]
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest axis first
    try:
      values = gguf.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
      raise HFConversionError(
          f"{self._path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, which the "
          f"gguf package cannot dequantise") from e
    values = np.asarray(values, np.float32).reshape(shape)
    kind = tensor.name.split(".")[-2]
    if kind in self._heads and shape[0] % (2 * self._heads[kind]) == 0:
      values = unpermute_rows(values, self._heads[kind])
    return values

  def __iter__(self) -> Iterator[str]:
    return iter(self._tensors)

  def __len__(self) -> int:
    return len(self._tensors)


@dataclasses.dataclass
class GGUFModel:
  """What a GGUF file holds: the encoder config, HF-named tensors, tokenizer and metadata."""
  config: EncoderConfig
  tensors: GGUFTensors
  tokenizer: Any  # tokenizers.Tokenizer
  metadata: dict[str, Any]


def _byte_level_tokenizer(meta: Mapping[str, Any], path: Path):
  """A `tokenizers` byte-level BPE tokenizer from the file's `tokenizer.ggml.*` fields."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise HFConversionError(
        f"{path}: tokenizer.ggml.model={kind!r} is not supported; only 'gpt2' (byte-level BPE)")
  pre = meta.get("tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZER_SPLITS:
    raise HFConversionError(
        f"{path}: tokenizer.ggml.pre={pre!r} (how text is split before BPE) is not supported; "
        f"supported: {sorted(PRE_TOKENIZER_SPLITS)}")
  tokens = list(meta["tokenizer.ggml.tokens"])
  types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
  vocab: dict[str, int] = {}
  for i, token in enumerate(tokens):
    if token in vocab:
      raise HFConversionError(
          f"{path}: token {token!r} appears twice in tokenizer.ggml.tokens (ids {vocab[token]}, {i})")
    vocab[token] = i
  merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  split = PRE_TOKENIZER_SPLITS[pre]
  if split is None:
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  else:
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tokenizer.decoder = decoders.ByteLevel()
  # Control tokens (<|endoftext|>, ...) and user-defined ones are matched whole in the text.
  tokenizer.add_special_tokens([
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t, k in zip(tokens, types) if k == _CONTROL])
  tokenizer.add_tokens([
      tokenizers.AddedToken(t, special=False, normalized=False)
      for t, k in zip(tokens, types) if k == _USER_DEFINED])
  pad = meta.get("tokenizer.ggml.padding_token_id")
  if pad is not None and 0 <= pad < len(tokens):
    tokenizer.enable_padding(pad_id=int(pad), pad_token=tokens[pad])
  return tokenizer


def read_gguf(path: str | Path, **overrides: Any) -> GGUFModel:
  """Config, lazily dequantised tensors (transformers names) and tokenizer of a GGUF file.

  `overrides` replace fields of the encoder config (e.g. dtype="bfloat16").

  Raises:
    HFConversionError: wrong magic, unsupported architecture or tokenizer,
      missing metadata, or a tensor this reader does not know (named).
  """
  path = Path(path)
  reader = _open(path)
  meta = _metadata(reader)
  embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
  if embedding is None:
    raise HFConversionError(f"{path}: tensor 'token_embd.weight' (the token embedding) is missing")
  hf = _hf_config(meta, path, int(embedding.shape[-1]))
  try:
    config = config_from_hf(hf, **overrides)
  except HFConversionError as e:
    raise HFConversionError(f"{path}: {e}") from e
  tensors = GGUFTensors(reader, path, hf["num_attention_heads"], hf["num_key_value_heads"])
  return GGUFModel(config, tensors, _byte_level_tokenizer(meta, path), meta)


_HF_LAYER = re.compile(r"\.layers\.(\d+)\.")
_GGUF_NAMES = {hf: key for key, hf in _LLAMA_NAMES.items()}


def gguf_name(hf_name: str) -> str | None:
  """The GGUF name of a transformers tensor name (None when it has none)."""
  match = _HF_LAYER.search(hf_name)
  key = _GGUF_NAMES.get(_HF_LAYER.sub(".layers.N.", hf_name))
  if key is None:
    return None
  return key.replace(".N.", f".{match.group(1)}.") if match else key


def _gguf_named(message: str) -> str:
  """`message` with each quoted transformers tensor name shown as its GGUF name."""
  def name(match: re.Match) -> str:
    gguf = gguf_name(match.group(1))
    return f"'{gguf}' ({match.group(1)})" if gguf else match.group(0)
  return re.sub(r"'([\w.]+)'", name, message)


def load_gguf(path: str | Path, **overrides: Any) -> tuple[EncoderConfig, dict[str, Any], GGUFModel]:
  """(encoder config, numpy params, the GGUFModel) of a GGUF file.

  Errors name the GGUF tensor (and its transformers name) and the expected shape.
  """
  model = read_gguf(path, **overrides)
  try:
    params = params_from_hf(model.config, model.tensors)
  except HFConversionError as e:
    raise HFConversionError(f"{path}: {_gguf_named(str(e))}") from e
  return model.config, params, model
