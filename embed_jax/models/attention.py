"""Multi-head self-attention with grouped key/value heads, masks and packing.

Which keys a query sees is the conjunction of: the key is a real token
(padding mask), the key is in the query's segment (packing), the key is not
after the query (causal models) and not further back than a sliding window.
Logits and softmax are float32 whatever the compute dtype.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from embed_jax.models import layers
from embed_jax.models.dropout import apply_dropout
from embed_jax.models.fused_attention import fused_attention
from embed_jax.models.positions import apply_rope

# None: "fused" on CPU (fused_attention.py: there 3x faster forward, 1.1-1.8x forward and
# backward), elsewhere jax.nn.dot_product_attention's own choice; "xla" / "cudnn": that
# function's paths.
IMPLEMENTATIONS = (None, "fused", "xla", "cudnn")


def resolve_implementation(implementation: str | None) -> str | None:
  """The attention path `implementation` names on the default backend (None: jax chooses)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; expected None or "
                     f"one of {list(IMPLEMENTATIONS[1:])}")
  if implementation is None and jax.default_backend() == "cpu":
    return "fused"
  return implementation


def padding_and_segment_mask(key_mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
  """bool [B, 1, L, L]: query i may see key j when j is real and in i's segment.

  Args:
    key_mask: [B, L], nonzero for real tokens.
    segment_ids: optional [B, L] int (0 = padding, 1..S = packed texts).
  """
  mask = key_mask.astype(bool)[:, None, None, :]
  if segment_ids is not None:
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    mask = mask & same & (segment_ids > 0)[:, None, None, :]
  return mask


def window_tuple(causal: bool, sliding_window: int | None) -> tuple[int, int] | None:
  """`jax.nn.dot_product_attention`'s (left, right) window for "i - j < sliding_window"."""
  if sliding_window is None:
    return None
  return (sliding_window - 1, 0 if causal else sliding_window - 1)


def structural_mask(length: int, causal: bool, sliding_window: int | None) -> jax.Array:
  """bool [1, 1, L, L] of the causal and sliding-window constraints (by index)."""
  i = jnp.arange(length)[:, None]
  j = jnp.arange(length)[None, :]
  allowed = jnp.ones((length, length), bool)
  if causal:
    allowed &= j <= i
  if sliding_window is not None:
    allowed &= jnp.abs(i - j) < sliding_window
  return allowed[None, None]


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    *,
    causal: bool = False,
    sliding_window: int | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    implementation: str | None = None,
) -> jax.Array:
  """Scaled dot-product attention, grouped-query aware: [B, L, N, H] out.

  Args:
    query: [B, L, N, H]; key, value: [B, L, K, H] with N a multiple of K.
    mask: bool [B, 1, L, L] (see `padding_and_segment_mask`); causal and
      sliding-window constraints are added from the flags.
    dropout_rng: when given with dropout_rate > 0, attention probabilities
      are dropped out.
    implementation: one of `IMPLEMENTATIONS`: "fused" (`fused_attention`,
      dropout included), or `jax.nn.dot_product_attention` with its fast paths
      (None | "xla" | "cudnn"; with dropout, the explicit einsum path instead).
      None is "fused" on CPU.
  """
  implementation = resolve_implementation(implementation)
  if implementation == "fused" or (dropout_rate > 0.0 and dropout_rng is not None):
    # Both take one mask holding every constraint, and the same dropout arguments.
    attend = fused_attention if implementation == "fused" else explicit_attention
    return attend(
        query, key, value, mask & structural_mask(query.shape[1], causal, sliding_window),
        dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  return jax.nn.dot_product_attention(
      query, key, value, mask=mask, is_causal=causal,
      local_window_size=window_tuple(causal, sliding_window), implementation=implementation)


def explicit_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
  """Attention written out (float32 logits and softmax), with optional dropout on the probabilities.

  Same shapes as `dot_product_attention`; `mask` already holds every constraint.
  """
  batch, length, num_heads, head_dim = query.shape
  num_kv_heads = key.shape[2]
  grouped = query.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
  logits = jnp.einsum("btkgh,bskh->bkgts", grouped, key, preferred_element_type=jnp.float32)
  logits = logits * (1.0 / jnp.sqrt(head_dim).astype(jnp.float32))
  logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout_rate > 0.0 and dropout_rng is not None:
    probs = apply_dropout(probs, dropout_rng, dropout_rate)
  out = jnp.einsum("bkgts,bskh->btkgh", probs.astype(value.dtype), value)
  return out.reshape(batch, length, num_heads, head_dim)


class Attention(nn.Module):
  """Self-attention block: projections, optional RoPE, attention, output projection.

  Params: query [embed, heads, head_dim], key/value [embed, kv_heads, head_dim],
  out [heads, head_dim, embed] (each `kernel`, plus `bias` when enabled).
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool
  out_bias: bool
  init_std: float
  out_init_std: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  causal: bool = False
  sliding_window: int | None = None
  rope_theta: float | None = None
  dropout_rate: float = 0.0
  implementation: str | None = None

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      key_mask: jax.Array,
      positions: jax.Array,
      segment_ids: jax.Array | None = None,
      deterministic: bool = True,
  ) -> jax.Array:
    """x: [B, L, D]; key_mask, positions, segment_ids: [B, L] -> [B, L, D].

    The [B, 1, L, L] mask is built here from [B, L] inputs so that XLA can
    fuse it into the logits instead of keeping one per layer.
    """
    common = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
    heads = (self.num_heads, self.head_dim)
    kv_heads = (self.num_kv_heads, self.head_dim)
    query = layers.dense(heads, ("embed",), ("heads", "head_dim"), use_bias=self.qkv_bias,
                         name="query", **common)(x)
    key = layers.dense(kv_heads, ("embed",), ("kv_heads", "head_dim"), use_bias=self.qkv_bias,
                       name="key", **common)(x)
    value = layers.dense(kv_heads, ("embed",), ("kv_heads", "head_dim"), use_bias=self.qkv_bias,
                         name="value", **common)(x)
    if self.rope_theta is not None:
      query = apply_rope(query, positions, self.rope_theta)
      key = apply_rope(key, positions, self.rope_theta)
    query = layers.constrain(query, ("batch", "length", "heads", "head_dim"))
    key = layers.constrain(key, ("batch", "length", "kv_heads", "head_dim"))
    value = layers.constrain(value, ("batch", "length", "kv_heads", "head_dim"))

    use_dropout = self.dropout_rate > 0.0 and not deterministic
    out = dot_product_attention(
        query, key, value, padding_and_segment_mask(key_mask, segment_ids),
        causal=self.causal,
        sliding_window=self.sliding_window,
        dropout_rate=self.dropout_rate,
        dropout_rng=self.make_rng("dropout") if use_dropout else None,
        implementation=self.implementation,
    )
    out = layers.constrain(out, ("batch", "length", "heads", "head_dim"))
    return layers.dense(
        x.shape[-1], ("heads", "head_dim"), ("embed",), use_bias=self.out_bias,
        init_std=self.out_init_std, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
