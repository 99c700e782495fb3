"""BERT-style encoder (BERT, MiniLM): post-norm blocks, bidirectional attention.

Embeddings are word + learned position + token type (always type 0: one text
per row), then LayerNorm and dropout. Each block: x = norm(x + attn(x)), then
x = norm(x + mlp(x)), the MLP with exact GELU. There is no pooler: pooling is
`embed_jax.models.pooling`.

Param tree (`params` collection):
  token_embed/embedding [vocab, D]          ("vocab", "embed")
  position_embed/embedding [max_length, D]  (None, "embed")
  type_embed/embedding [type_vocab_size, D] (None, "embed")
  embed_norm/{scale, bias}
  layer_{i}/attention/{query,key,value,out}/{kernel, bias}
  layer_{i}/attention_norm/{scale, bias}
  layer_{i}/mlp/{wi, wo}/{kernel, bias}
  layer_{i}/mlp_norm/{scale, bias}
With scan_layers=True the layer_{i} subtrees are stacked under `layers`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from embed_jax.models import layers, stack
from embed_jax.models.attention import Attention
from embed_jax.models.dropout import Dropout
from embed_jax.models.positions import default_positions


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Shape and numerics of a BERT-style encoder (defaults: bert-base-uncased).

  Attributes:
    vocab_size, d_model, num_layers, num_heads, d_ff: the usual shapes.
    max_length: rows of the learned position table.
    type_vocab_size: rows of the token-type table (only type 0 is used).
    norm_eps: LayerNorm epsilon.
    mlp_activation: "gelu" (exact, as BERT), "gelu_tanh", "relu" or "silu".
    dropout_rate: dropout after the embeddings and on each residual branch.
    attention_dropout_rate: dropout on the attention probabilities.
    init_std: std of the normal initialisers.
    dtype, param_dtype, remat_policy, scan_layers, attention_impl: as in `DecoderConfig`.
  """
  vocab_size: int = 30522
  d_model: int = 768
  num_layers: int = 12
  num_heads: int = 12
  d_ff: int = 3072
  max_length: int = 512
  type_vocab_size: int = 2
  norm_eps: float = 1e-12
  mlp_activation: str = "gelu"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = False
  attention_impl: str | None = None

  def __post_init__(self):
    layers.check_choice("mlp_activation", self.mlp_activation, layers.ACTIVATIONS)
    layers.check_choice("remat_policy", self.remat_policy, stack.REMAT_CHOICES)
    if self.d_model % self.num_heads:
      raise ValueError(
          f"BertConfig: d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)  # pylint: disable=expression-not-assigned

  @property
  def head_size(self) -> int:
    return self.d_model // self.num_heads


class BertBlock(nn.Module):
  """Post-norm block: x = norm(x + attn(x)); x = norm(x + mlp(x)). [B, L, D] -> ([B, L, D], None)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, key_mask, positions, segment_ids, deterministic: bool):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm = dict(epsilon=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype)

    h = Attention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads, head_dim=cfg.head_size,
        qkv_bias=True, out_bias=True, init_std=cfg.init_std, out_init_std=cfg.init_std,
        dtype=dtype, param_dtype=param_dtype, causal=False,
        dropout_rate=cfg.attention_dropout_rate, implementation=cfg.attention_impl,
        name="attention")(x, key_mask, positions, segment_ids, deterministic)
    h = Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    x = layers.norm("layernorm", name="attention_norm", **norm)(x + h)

    h = layers.Mlp(
        d_ff=cfg.d_ff, activation=cfg.mlp_activation, gated=False, use_bias=True,
        init_std=cfg.init_std, out_init_std=cfg.init_std, dtype=dtype, param_dtype=param_dtype,
        name="mlp")(x)
    h = Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    x = layers.norm("layernorm", name="mlp_norm", **norm)(x + h)
    return layers.constrain(x, layers.HIDDEN_AXES), None


class BertEncoder(nn.Module):
  """tokens [B, L] -> last hidden states [B, L, D] (`transformers`' `last_hidden_state`)."""
  config: BertConfig

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
    """Same contract as `transformer.Decoder.__call__` (attention is bidirectional).

    With layers_out, the outputs of earlier blocks are returned as they are
    (post-norm blocks end in a norm).
    """
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    layers.check_length(tokens.shape[1], cfg.max_length, "BertConfig")
    if positions is None:
      positions = default_positions(mask, segment_ids)
    embed = dict(init_std=cfg.init_std, dtype=dtype, param_dtype=param_dtype)

    x = layers.embedding(cfg.vocab_size, cfg.d_model, "vocab", name="token_embed", **embed)(tokens)
    x = x + layers.embedding(cfg.max_length, cfg.d_model, None, name="position_embed", **embed)(
        positions)
    type_table = layers.embedding(
        cfg.type_vocab_size, cfg.d_model, None, name="type_embed", **embed)
    x = x + type_table(jnp.zeros_like(tokens))
    x = layers.norm("layernorm", epsilon=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype,
                    name="embed_norm")(x)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, layers.HIDDEN_AXES)

    return stack.run_blocks(
        BertBlock, cfg, x, mask.astype(bool), positions, segment_ids, deterministic,
        collect=layers_out)
