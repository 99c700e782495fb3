"""`transformers` config.json -> our encoder config (`DecoderConfig` or `BertConfig`).

Supported model types: gpt2, llama, qwen2, mistral (one decoder family that
differs in known fields) and bert (also MiniLM). A field that would change
the computation in a way we do not implement (e.g. a rope_scaling type other
than the default) is rejected with an error naming it, never ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from embed_jax.errors import UserError
from embed_jax.models.bert import BertConfig
from embed_jax.models.transformer import DecoderConfig

EncoderConfig = DecoderConfig | BertConfig


class HFConversionError(UserError):
  """A `transformers` checkpoint cannot be converted; the message says what and where."""


# transformers' activation names -> ours.
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def _activation(hf: Mapping[str, Any], field: str, default: str) -> str:
  name = hf.get(field, default)
  if name not in _ACTIVATIONS:
    raise HFConversionError(
        f"{field}={name!r} is not supported; supported activations: {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def _require(hf: Mapping[str, Any], field: str, expected: Any, why: str) -> None:
  """Rejects `field` unless it is absent or equals `expected`."""
  if field in hf and hf[field] is not None and hf[field] != expected:
    raise HFConversionError(f"{field}={hf[field]!r} is not supported ({why}); expected {expected!r}")


def _gpt2(hf: Mapping[str, Any]) -> DecoderConfig:
  _require(hf, "scale_attn_weights", True, "unscaled attention")
  _require(hf, "scale_attn_by_inverse_layer_idx", False, "per-layer attention scaling")
  _require(hf, "add_cross_attention", False, "cross-attention")
  return DecoderConfig(
      vocab_size=hf["vocab_size"],
      d_model=hf["n_embd"],
      num_layers=hf["n_layer"],
      num_heads=hf["n_head"],
      d_ff=hf.get("n_inner"),
      max_length=hf["n_positions"],
      position_embedding="learned",
      norm="layernorm",
      norm_eps=hf.get("layer_norm_epsilon", 1e-5),
      mlp_activation=_activation(hf, "activation_function", "gelu_new"),
      gated_mlp=False,
      qkv_bias=True, out_bias=True, mlp_bias=True,
      causal=True,
      dropout_rate=hf.get("resid_pdrop", 0.0),
      attention_dropout_rate=hf.get("attn_pdrop", 0.0),
      init_std=hf.get("initializer_range", 0.02),
  )


def _rope_theta(hf: Mapping[str, Any]) -> float:
  """rope theta from `rope_parameters` (transformers >= 5) or `rope_theta`/`rope_scaling` (older)."""
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  if rope_type != "default":
    raise HFConversionError(
        f"rope type {rope_type!r} (rope_parameters/rope_scaling) is not supported; only 'default'")
  for source in (params, scaling, hf):
    if source.get("partial_rotary_factor", 1.0) != 1.0:
      raise HFConversionError(
          f"partial_rotary_factor={source['partial_rotary_factor']} is not supported; expected 1.0")
  return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _sliding_window(hf: Mapping[str, Any], model_type: str) -> int | None:
  """The one window applied to every layer, or None; mixed per-layer windows are rejected.

  Mistral windows every layer. Qwen2 windows the layers its `layer_types` mark
  "sliding_attention" (older configs: use_sliding_window and layers from
  max_window_layers on).
  """
  window = hf.get("sliding_window")
  if model_type == "mistral":
    return window
  if model_type != "qwen2" or window is None:
    return None
  num_layers = hf["num_hidden_layers"]
  first_windowed = hf.get("max_window_layers", num_layers)
  layer_types = hf.get("layer_types") or [
      "sliding_attention" if hf.get("use_sliding_window") and i >= first_windowed
      else "full_attention" for i in range(num_layers)]
  if all(t == "full_attention" for t in layer_types):
    return None
  if all(t == "sliding_attention" for t in layer_types):
    return window
  raise HFConversionError(
      f"sliding_window={window} on some layers only (layer_types / max_window_layers) is not "
      "supported; our decoder applies one window to every layer")


def _llama_family(hf: Mapping[str, Any], model_type: str) -> DecoderConfig:
  layer_types = hf.get("layer_types")
  if model_type != "qwen2" and layer_types and any(t != "full_attention" for t in layer_types):
    raise HFConversionError(f"layer_types={layer_types!r} is not supported (per-layer attention)")
  num_heads = hf["num_attention_heads"]
  if model_type == "qwen2":
    qkv_bias, out_bias, mlp_bias = True, False, False
  else:
    attention_bias = bool(hf.get("attention_bias", False))
    qkv_bias, out_bias, mlp_bias = attention_bias, attention_bias, bool(hf.get("mlp_bias", False))
  return DecoderConfig(
      vocab_size=hf["vocab_size"],
      d_model=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=num_heads,
      num_kv_heads=hf.get("num_key_value_heads") or num_heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
      d_ff=hf["intermediate_size"],
      max_length=hf.get("max_position_embeddings", 2048),
      position_embedding="rope",
      rope_theta=_rope_theta(hf),
      norm="rmsnorm",
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      mlp_activation=_activation(hf, "hidden_act", "silu"),
      gated_mlp=True,
      qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias,
      causal=True,
      sliding_window=_sliding_window(hf, model_type),
      dropout_rate=0.0,
      attention_dropout_rate=hf.get("attention_dropout", 0.0),
      init_std=hf.get("initializer_range", 0.02),
  )


def _bert(hf: Mapping[str, Any]) -> BertConfig:
  _require(hf, "position_embedding_type", "absolute", "relative position embeddings")
  _require(hf, "is_decoder", False, "a causal BERT")
  _require(hf, "add_cross_attention", False, "cross-attention")
  return BertConfig(
      vocab_size=hf["vocab_size"],
      d_model=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      d_ff=hf["intermediate_size"],
      max_length=hf["max_position_embeddings"],
      type_vocab_size=hf.get("type_vocab_size", 2),
      norm_eps=hf.get("layer_norm_eps", 1e-12),
      mlp_activation=_activation(hf, "hidden_act", "gelu"),
      dropout_rate=hf.get("hidden_dropout_prob", 0.1),
      attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
      init_std=hf.get("initializer_range", 0.02),
  )


_CONVERTERS = {
    "gpt2": _gpt2,
    "llama": lambda hf: _llama_family(hf, "llama"),
    "qwen2": lambda hf: _llama_family(hf, "qwen2"),
    "mistral": lambda hf: _llama_family(hf, "mistral"),
    "bert": _bert,
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_CONVERTERS))


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> EncoderConfig:
  """Our encoder config for a `transformers` config dict (the contents of config.json).

  Args:
    hf_config: the config dict; its `model_type` picks the architecture.
    **overrides: fields of the result to replace (e.g. dtype="bfloat16", dropout_rate=0.0).

  Raises:
    HFConversionError: for an unsupported model_type (naming the supported ones),
      a field whose value we do not implement, or a missing required field.
  """
  model_type = hf_config.get("model_type")
  if model_type not in _CONVERTERS:
    raise HFConversionError(
        f"unsupported architecture model_type={model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
  try:
    config = _CONVERTERS[model_type](hf_config)
  except KeyError as e:
    raise HFConversionError(f"{model_type} config lacks the field {e.args[0]!r}") from e
  return dataclasses.replace(config, **overrides) if overrides else config


# Our activation names -> the transformers name that maps back to them.
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
# Fields that do not change what the encoder computes; carried over on the round-trip check.
_RUNTIME_FIELDS = ("dropout_rate", "attention_dropout_rate", "init_std", "dtype", "param_dtype",
                   "remat_policy", "scan_layers", "attention_impl")


def _decoder_to_hf(cfg: DecoderConfig) -> dict[str, Any]:
  activation = _HF_ACTIVATIONS.get(cfg.mlp_activation, cfg.mlp_activation)
  if cfg.position_embedding == "learned":
    return {"model_type": "gpt2", "architectures": ["GPT2Model"], "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
            "n_inner": cfg.ff_size, "n_positions": cfg.max_length, "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": activation}
  model_type = ("mistral" if cfg.sliding_window is not None
                else "qwen2" if cfg.qkv_bias and not cfg.out_bias else "llama")
  hf = {"model_type": model_type,
        "architectures": [f"{model_type.capitalize()}Model"], "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size, "intermediate_size": cfg.ff_size,
        "max_position_embeddings": cfg.max_length, "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps, "hidden_act": activation, "tie_word_embeddings": False}
  if model_type == "llama":
    hf.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
  elif model_type == "mistral":
    hf["sliding_window"] = cfg.sliding_window
  return hf


def config_to_hf(config: EncoderConfig) -> dict[str, Any]:
  """A `transformers` config dict (config.json) for our encoder config: the inverse of `config_from_hf`.

  Raises:
    HFConversionError: when no supported `transformers` model computes what
      `config` does (e.g. a bidirectional decoder), naming the differing fields.
  """
  if isinstance(config, BertConfig):
    hf = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": config.vocab_size,
          "hidden_size": config.d_model, "num_hidden_layers": config.num_layers,
          "num_attention_heads": config.num_heads, "intermediate_size": config.d_ff,
          "max_position_embeddings": config.max_length, "type_vocab_size": config.type_vocab_size,
          "layer_norm_eps": config.norm_eps,
          "hidden_act": _HF_ACTIVATIONS.get(config.mlp_activation, config.mlp_activation)}
  elif isinstance(config, DecoderConfig):
    hf = _decoder_to_hf(config)
  else:
    raise TypeError(f"no transformers config for {type(config).__name__}")
  try:
    back = config_from_hf(hf, **{f: getattr(config, f) for f in _RUNTIME_FIELDS})
  except HFConversionError as e:
    raise HFConversionError(f"the encoder cannot be written as a {hf['model_type']} config: {e}") from e
  resolved = lambda c: dataclasses.replace(  # noqa: E731  (None = derived from other fields)
      c, num_kv_heads=c.kv_heads, head_dim=c.head_size, d_ff=c.ff_size) if isinstance(
          c, DecoderConfig) else c
  ours, back = resolved(config), resolved(back)
  differing = [f.name for f in dataclasses.fields(ours) if getattr(back, f.name) != getattr(ours, f.name)]
  if differing:
    raise HFConversionError(
        f"no transformers {hf['model_type']} model computes this encoder; it differs in "
        + ", ".join(f"{f}={getattr(ours, f)!r}" for f in differing))
  return hf
