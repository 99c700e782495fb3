"""Decoder-only Transformer, GPT-2 style or Llama style by configuration.

GPT-2 style (the defaults; also the paper's cpt models, which are GPT-3-family
shapes): learned positions, LayerNorm, GELU (tanh) MLP, biases everywhere.
Llama style: `position_embedding="rope"`, `norm="rmsnorm"`,
`mlp_activation="silu"` with `gated_mlp=True` (SwiGLU), `num_kv_heads` <
`num_heads` (grouped-query attention), no biases (`qkv_bias=True` alone gives
Qwen2). There is no LM head: the model returns the last hidden states.

Param tree (`params` collection):
  token_embed/embedding [vocab, D]            ("vocab", "embed")
  position_embed/embedding [max_length, D]    (None, "embed"); learned positions only
  layer_{i}/attention_norm/{scale, bias}      ("embed",); bias with LayerNorm only
  layer_{i}/attention/{query,key,value,out}/{kernel, bias}
  layer_{i}/mlp_norm/{scale, bias}
  layer_{i}/mlp/{wi | wi_gate, wi_up, wo}/{kernel, bias}
  final_norm/{scale, bias}
With scan_layers=True the layer_{i} subtrees are stacked into one `layers`
subtree with a leading [num_layers] axis (see `models/stack.py`).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from embed_jax.models import layers, stack
from embed_jax.models.attention import Attention
from embed_jax.models.dropout import Dropout
from embed_jax.models.positions import default_positions

POSITION_EMBEDDINGS = ("learned", "rope")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Shape and numerics of a decoder-only Transformer (defaults: GPT-2 small).

  Attributes:
    vocab_size: rows of the token embedding table.
    d_model: hidden size D.
    num_layers: number of Transformer blocks.
    num_heads: query heads.
    num_kv_heads: key/value heads (grouped-query attention); None = num_heads.
    head_dim: size of each head; None = d_model // num_heads.
    d_ff: hidden size of the MLP; None = 4 * d_model.
    max_length: rows of the learned position table (longest input for "learned").
    position_embedding: "learned" (added to the token embeddings) or "rope".
    rope_theta: base of the rotary frequencies.
    norm: "layernorm" or "rmsnorm" (pre-norm blocks and a final norm).
    norm_eps: epsilon of the norms.
    mlp_activation: "gelu_tanh" (GPT-2), "gelu", "relu" or "silu".
    gated_mlp: act(x W_gate) * (x W_up) before W_out (SwiGLU with "silu").
    qkv_bias, out_bias, mlp_bias: biases of the q/k/v, attention-output and MLP projections.
    causal: causal attention (False: bidirectional).
    sliding_window: a query at i sees keys j with i - j < sliding_window (Mistral); None = all.
    dropout_rate: dropout on the embeddings and on each residual branch.
    attention_dropout_rate: dropout on the attention probabilities.
    init_std: std of the normal initialisers; residual output projections use
      init_std / sqrt(2 num_layers) as in GPT-2.
    dtype: compute dtype (e.g. "bfloat16"); norms and softmax stay float32 inside.
    param_dtype: dtype the params are stored in.
    remat_policy: "none", "full", "dots" or "dots_no_batch" (rematerialise each block).
    scan_layers: run the blocks with `nn.scan` over params stacked under `layers`
      (compile time flat in depth); see `models/stack.py`.
    attention_impl: None (on CPU "fused", elsewhere jax chooses), "fused" (our
      `fused_attention`), or `jax.nn.dot_product_attention`'s "xla" or "cudnn".
  """
  vocab_size: int = 50257
  d_model: int = 768
  num_layers: int = 12
  num_heads: int = 12
  num_kv_heads: int | None = None
  head_dim: int | None = None
  d_ff: int | None = None
  max_length: int = 1024
  position_embedding: str = "learned"
  rope_theta: float = 10000.0
  norm: str = "layernorm"
  norm_eps: float = 1e-5
  mlp_activation: str = "gelu_tanh"
  gated_mlp: bool = False
  qkv_bias: bool = True
  out_bias: bool = True
  mlp_bias: bool = True
  causal: bool = True
  sliding_window: int | None = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = False
  attention_impl: str | None = None

  def __post_init__(self):
    layers.check_choice("position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
    layers.check_choice("norm", self.norm, layers.NORMS)
    layers.check_choice("mlp_activation", self.mlp_activation, layers.ACTIVATIONS)
    layers.check_choice("remat_policy", self.remat_policy, stack.REMAT_CHOICES)
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(
          f"DecoderConfig: d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
          "set head_dim")
    if self.num_heads % self.kv_heads:
      raise ValueError(
          f"DecoderConfig: num_heads={self.num_heads} is not a multiple of "
          f"num_kv_heads={self.kv_heads}")
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"DecoderConfig: sliding_window must be >= 1, got {self.sliding_window}")
    jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)  # pylint: disable=expression-not-assigned

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def head_size(self) -> int:
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def ff_size(self) -> int:
    return 4 * self.d_model if self.d_ff is None else self.d_ff


class DecoderBlock(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). [B, L, D] -> ([B, L, D], None)."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, key_mask, positions, segment_ids, deterministic: bool):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm = dict(epsilon=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype)
    out_init_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)

    h = layers.norm(cfg.norm, name="attention_norm", **norm)(x)
    h = Attention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.kv_heads, head_dim=cfg.head_size,
        qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias,
        init_std=cfg.init_std, out_init_std=out_init_std, dtype=dtype, param_dtype=param_dtype,
        causal=cfg.causal, sliding_window=cfg.sliding_window,
        rope_theta=cfg.rope_theta if cfg.position_embedding == "rope" else None,
        dropout_rate=cfg.attention_dropout_rate, implementation=cfg.attention_impl,
        name="attention")(h, key_mask, positions, segment_ids, deterministic)
    x = x + Dropout(cfg.dropout_rate)(h, deterministic=deterministic)

    h = layers.norm(cfg.norm, name="mlp_norm", **norm)(x)
    h = layers.Mlp(
        d_ff=cfg.ff_size, activation=cfg.mlp_activation, gated=cfg.gated_mlp,
        use_bias=cfg.mlp_bias, init_std=cfg.init_std, out_init_std=out_init_std,
        dtype=dtype, param_dtype=param_dtype, name="mlp")(h)
    x = x + Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return layers.constrain(x, layers.HIDDEN_AXES), None


class Decoder(nn.Module):
  """The decoder as an encoder: tokens [B, L] -> last hidden states [B, L, D] after the final norm."""
  config: DecoderConfig

  @nn.compact
  def __call__(
      self,
      tokens: jax.Array,
      mask: jax.Array,
      *,
      positions: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      deterministic: bool = True,
      layers_out: tuple[int, ...] | None = None,
  ) -> jax.Array | tuple[jax.Array, ...]:
    """Encodes `tokens`.

    Args:
      tokens: int32 [B, L].
      mask: [B, L], 1 for real tokens, 0 for padding (left or right).
      positions: int [B, L]; default `default_positions(mask, segment_ids)`.
      segment_ids: optional int [B, L]; 0 = padding, 1..S = packed texts that
        attend only within themselves.
      deterministic: False enables dropout (needs a "dropout" rng).
      layers_out: block counts n; then a tuple of the hidden states after the
        first n blocks, each through the final norm (2D Matryoshka, `--layers`),
        computing only max(layers_out) blocks.

    Returns:
      [B, L, D] hidden states in the compute dtype (a tuple with layers_out).
    """
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if cfg.position_embedding == "learned":
      layers.check_length(tokens.shape[1], cfg.max_length, "DecoderConfig")
    if positions is None:
      positions = default_positions(mask, segment_ids)
    embed = dict(init_std=cfg.init_std, dtype=dtype, param_dtype=param_dtype)

    x = layers.embedding(cfg.vocab_size, cfg.d_model, "vocab", name="token_embed", **embed)(tokens)
    if cfg.position_embedding == "learned":
      x = x + layers.embedding(
          cfg.max_length, cfg.d_model, None, name="position_embed", **embed)(positions)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.HIDDEN_AXES)

    x = stack.run_blocks(
        DecoderBlock, cfg, x, mask.astype(bool), positions, segment_ids, deterministic,
        collect=layers_out)
    final_norm = layers.norm(cfg.norm, epsilon=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype,
                             name="final_norm")
    if layers_out is not None:
      return tuple(layers.constrain(final_norm(h), layers.HIDDEN_AXES) for h in x)
    return layers.constrain(final_norm(x), layers.HIDDEN_AXES)
