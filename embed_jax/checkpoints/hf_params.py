"""`transformers` tensors -> our param tree (see models/transformer.py, models/bert.py).

Three naming layouts cover the supported model types: gpt2 (Conv1D weights
stored [in, out], q/k/v fused in `c_attn`), llama (llama, qwen2, mistral:
`nn.Linear` weights stored [out, in]) and bert. A prefix such as
"transformer.", "model." or "bert." (checkpoints saved from a task model) is
found from the token embedding's name. LM heads, poolers and buffers are
ignored; any other tensor left over is reported in a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from embed_jax.checkpoints.hf_config import EncoderConfig, HFConversionError
from embed_jax.models.bert import BertConfig
from embed_jax.models.stack import stack_layer_params, unstack_layer_params
from embed_jax.models.transformer import DecoderConfig

# Tensors a `transformers` checkpoint may hold that the encoder does not use.
_IGNORED = re.compile(
    r"(^|\.)(lm_head|score|pooler|cls|qa_outputs|classifier)\.|"
    r"(^|\.)(position_ids|inv_freq|attn\.bias|attn\.masked_bias)$")


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where one of our params comes from: an HF tensor, its expected shape, and the conversion."""
  name: str
  shape: tuple[int, ...]
  convert: Callable[[np.ndarray], np.ndarray] = lambda w: w


def _linear(out_shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
  """torch Linear weight [out, in] -> our kernel [in, *out_shape]."""
  return lambda w: w.T.reshape(w.shape[1], *out_shape)


def _linear_in(in_shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
  """torch Linear weight [out, in] -> our kernel [*in_shape, out] (attention output)."""
  return lambda w: w.T.reshape(*in_shape, w.shape[0])


def _reshape(shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
  return lambda w: w.reshape(shape)


def _gpt2_sources(cfg: DecoderConfig) -> dict[str, _Source]:
  d, h, hd, f = cfg.d_model, cfg.num_heads, cfg.head_size, cfg.ff_size
  sources = {
      "token_embed/embedding": _Source("wte.weight", (cfg.vocab_size, d)),
      "position_embed/embedding": _Source("wpe.weight", (cfg.max_length, d)),
      "final_norm/scale": _Source("ln_f.weight", (d,)),
      "final_norm/bias": _Source("ln_f.bias", (d,)),
  }
  for i in range(cfg.num_layers):
    hf, ours = f"h.{i}.", f"layer_{i}/"
    # q, k and v are column blocks of one fused tensor (kernels first, then
    # biases, so that each fused tensor is read once).
    for j, part in enumerate(("query", "key", "value")):
      sources[ours + f"attention/{part}/kernel"] = _Source(
          hf + "attn.c_attn.weight", (d, 3 * d),
          lambda w, j=j: w[:, j * d:(j + 1) * d].reshape(d, h, hd))
    for j, part in enumerate(("query", "key", "value")):
      sources[ours + f"attention/{part}/bias"] = _Source(
          hf + "attn.c_attn.bias", (3 * d,), lambda w, j=j: w[j * d:(j + 1) * d].reshape(h, hd))
    sources.update({
        ours + "attention/out/kernel": _Source(hf + "attn.c_proj.weight", (d, d), _reshape((h, hd, d))),
        ours + "attention/out/bias": _Source(hf + "attn.c_proj.bias", (d,)),
        ours + "attention_norm/scale": _Source(hf + "ln_1.weight", (d,)),
        ours + "attention_norm/bias": _Source(hf + "ln_1.bias", (d,)),
        ours + "mlp_norm/scale": _Source(hf + "ln_2.weight", (d,)),
        ours + "mlp_norm/bias": _Source(hf + "ln_2.bias", (d,)),
        ours + "mlp/wi/kernel": _Source(hf + "mlp.c_fc.weight", (d, f)),
        ours + "mlp/wi/bias": _Source(hf + "mlp.c_fc.bias", (f,)),
        ours + "mlp/wo/kernel": _Source(hf + "mlp.c_proj.weight", (f, d)),
        ours + "mlp/wo/bias": _Source(hf + "mlp.c_proj.bias", (d,)),
    })
  return sources


def _llama_sources(cfg: DecoderConfig) -> dict[str, _Source]:
  d, h, k, hd, f = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_size, cfg.ff_size
  sources = {
      "token_embed/embedding": _Source("embed_tokens.weight", (cfg.vocab_size, d)),
      "final_norm/scale": _Source("norm.weight", (d,)),
  }
  for i in range(cfg.num_layers):
    hf, ours = f"layers.{i}.", f"layer_{i}/"
    for part, proj, heads in (("query", "q_proj", h), ("key", "k_proj", k), ("value", "v_proj", k)):
      sources[ours + f"attention/{part}/kernel"] = _Source(
          hf + f"self_attn.{proj}.weight", (heads * hd, d), _linear((heads, hd)))
      if cfg.qkv_bias:
        sources[ours + f"attention/{part}/bias"] = _Source(
            hf + f"self_attn.{proj}.bias", (heads * hd,), _reshape((heads, hd)))
    sources[ours + "attention/out/kernel"] = _Source(
        hf + "self_attn.o_proj.weight", (d, h * hd), _linear_in((h, hd)))
    if cfg.out_bias:
      sources[ours + "attention/out/bias"] = _Source(hf + "self_attn.o_proj.bias", (d,))
    sources[ours + "attention_norm/scale"] = _Source(hf + "input_layernorm.weight", (d,))
    sources[ours + "mlp_norm/scale"] = _Source(hf + "post_attention_layernorm.weight", (d,))
    for part, proj, shape in (("wi_gate", "gate_proj", (f, d)), ("wi_up", "up_proj", (f, d)),
                              ("wo", "down_proj", (d, f))):
      sources[ours + f"mlp/{part}/kernel"] = _Source(hf + f"mlp.{proj}.weight", shape, np.transpose)
      if cfg.mlp_bias:
        sources[ours + f"mlp/{part}/bias"] = _Source(hf + f"mlp.{proj}.bias", (shape[0],))
  return sources


def _bert_sources(cfg: BertConfig) -> dict[str, _Source]:
  d, h, hd, f = cfg.d_model, cfg.num_heads, cfg.head_size, cfg.d_ff
  e = "embeddings."
  sources = {
      "token_embed/embedding": _Source(e + "word_embeddings.weight", (cfg.vocab_size, d)),
      "position_embed/embedding": _Source(e + "position_embeddings.weight", (cfg.max_length, d)),
      "type_embed/embedding": _Source(e + "token_type_embeddings.weight", (cfg.type_vocab_size, d)),
      "embed_norm/scale": _Source(e + "LayerNorm.weight", (d,)),
      "embed_norm/bias": _Source(e + "LayerNorm.bias", (d,)),
  }
  for i in range(cfg.num_layers):
    hf, ours = f"encoder.layer.{i}.", f"layer_{i}/"
    for part in ("query", "key", "value"):
      sources[ours + f"attention/{part}/kernel"] = _Source(
          hf + f"attention.self.{part}.weight", (d, d), _linear((h, hd)))
      sources[ours + f"attention/{part}/bias"] = _Source(
          hf + f"attention.self.{part}.bias", (d,), _reshape((h, hd)))
    sources.update({
        ours + "attention/out/kernel": _Source(
            hf + "attention.output.dense.weight", (d, d), _linear_in((h, hd))),
        ours + "attention/out/bias": _Source(hf + "attention.output.dense.bias", (d,)),
        ours + "attention_norm/scale": _Source(hf + "attention.output.LayerNorm.weight", (d,)),
        ours + "attention_norm/bias": _Source(hf + "attention.output.LayerNorm.bias", (d,)),
        ours + "mlp/wi/kernel": _Source(hf + "intermediate.dense.weight", (f, d), np.transpose),
        ours + "mlp/wi/bias": _Source(hf + "intermediate.dense.bias", (f,)),
        ours + "mlp/wo/kernel": _Source(hf + "output.dense.weight", (d, f), np.transpose),
        ours + "mlp/wo/bias": _Source(hf + "output.dense.bias", (d,)),
        ours + "mlp_norm/scale": _Source(hf + "output.LayerNorm.weight", (d,)),
        ours + "mlp_norm/bias": _Source(hf + "output.LayerNorm.bias", (d,)),
    })
  return sources


def _sources(config: EncoderConfig, names: Mapping[str, Any]) -> dict[str, _Source]:
  """Picks the naming layout: BERT by config type; gpt2 vs llama by the embedding's name."""
  if isinstance(config, BertConfig):
    return _bert_sources(config)
  if isinstance(config, DecoderConfig):
    gpt2 = any(n == "wte.weight" or n.endswith(".wte.weight") for n in names)
    layout, expected = ("gpt2", "learned") if gpt2 else ("llama", "rope")
    if config.position_embedding != expected:
      raise HFConversionError(
          f"the checkpoint has {layout}-style tensor names, which need "
          f"position_embedding={expected!r}; the config has {config.position_embedding!r}")
    return _gpt2_sources(config) if gpt2 else _llama_sources(config)
  raise TypeError(f"no HF layout for config type {type(config).__name__}")


def _find_prefix(names: Mapping[str, Any], embedding_name: str) -> str:
  """The prefix before the token embedding's name ("", "model.", "transformer.", ...)."""
  prefixes = sorted(n[: -len(embedding_name)] for n in names
                    if n == embedding_name or n.endswith("." + embedding_name))
  if not prefixes:
    raise HFConversionError(
        f"tensor {embedding_name!r} (the token embedding) not found under any prefix; "
        f"the checkpoint has e.g. {sorted(names)[:8]}")
  if len(prefixes) > 1:
    raise HFConversionError(
        f"tensor {embedding_name!r} found under several prefixes {prefixes}; which model is it?")
  return prefixes[0]


def _legacy_names(tensors: Mapping[str, Any]) -> dict[str, str]:
  """Our-style name -> stored name, mapping old BERT LayerNorm gamma/beta to weight/bias."""
  renamed = {}
  for name in tensors:
    new = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    new = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", new)
    renamed[new] = name
  return renamed


def params_from_hf(config: EncoderConfig, tensors: Mapping[str, Any]) -> dict[str, Any]:
  """Our encoder's param tree (numpy, in config.param_dtype) from `transformers` tensors.

  Args:
    config: the encoder config (e.g. from `config_from_hf`).
    tensors: HF tensor name -> array (numpy or anything `np.asarray` takes);
      may be a lazy mapping: each tensor is read once.

  Returns:
    The nested `params` dict of `Decoder` / `BertEncoder` (layers stacked
    under `layers` when config.scan_layers).

  Raises:
    HFConversionError: naming a missing tensor, or one whose shape differs from
      what the config expects (both shapes given).
  """
  names = _legacy_names(tensors)
  sources = _sources(config, names)
  prefix = _find_prefix(names, sources["token_embed/embedding"].name)
  dtype = np.dtype(jnp.dtype(config.param_dtype))
  used: set[str] = set()
  current_name, current = None, None  # the last tensor read (fused ones serve several params)
  params: dict[str, Any] = {}
  for path, source in sources.items():
    name = prefix + source.name
    if name not in names:
      raise HFConversionError(
          f"tensor {name!r} (for our param {path}) is missing from the checkpoint")
    if name != current_name:
      current_name, current = name, np.asarray(tensors[names[name]])
      used.add(name)
      if current.shape != source.shape:
        raise HFConversionError(
            f"tensor {name!r} has shape {current.shape}, expected {source.shape} "
            f"for {type(config).__name__} (d_model, heads, vocab, ...)")
    node = params
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = np.ascontiguousarray(source.convert(current).astype(dtype))
  unused = sorted(n for n in names if n not in used and not _IGNORED.search(n))
  if unused:
    logging.warning("%d checkpoint tensors were not used: %s", len(unused), unused[:20])
  if config.scan_layers:
    params = stack_layer_params(params, config.num_layers)
  return params


def params_to_hf(config: EncoderConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
  """`transformers` tensors (base-model names, float32) from our encoder params: the inverse of
  `params_from_hf`.

  Uses the same name tables: each conversion only reshapes, transposes or
  slices, so pushing the element indices of the HF tensor through it tells
  where every element of our param goes back to.
  """
  if config.scan_layers:
    params = unstack_layer_params(params, config.num_layers)
  layout_hint = {"wte.weight": None} if (
      isinstance(config, DecoderConfig) and config.position_embedding == "learned") else {}
  tensors: dict[str, np.ndarray] = {}
  filled: dict[str, np.ndarray] = {}
  for path, source in _sources(config, layout_hint).items():
    node = params
    for key in path.split("/"):
      node = node[key]
    value = np.asarray(node, np.float32)
    index = source.convert(np.arange(int(np.prod(source.shape))).reshape(source.shape))
    if index.shape != value.shape:
      raise HFConversionError(f"param {path} has shape {value.shape}, expected {index.shape}")
    out = tensors.setdefault(source.name, np.zeros(source.shape, np.float32))
    out.reshape(-1)[index.reshape(-1)] = value.reshape(-1)
    filled.setdefault(source.name, np.zeros(source.shape, bool)).reshape(-1)[index.reshape(-1)] = True
  for name, done in filled.items():
    if not done.all():  # a mapping bug, never bad input
      raise AssertionError(f"tensor {name}: {int((~done).sum())} elements have no param")
  return tensors
