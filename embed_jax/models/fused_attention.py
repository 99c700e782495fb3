"""Attention with a hand-written backward pass, laid out for fast batched matmuls on CPU.

`jax.nn.dot_product_attention`'s XLA path contracts [B, L, N, H] operands in
place; XLA:CPU then transposes the [B, N, L, L] scores between the two
products and in the backward pass, and autodiff keeps the scores, the
probabilities and the dropout mask alive for the backward pass. On a
MiniLM-sized layer ([64, 128] tokens, 12 heads of 32) that came to 3-4x
torch's fused kernel. Here:

- q, k and v are transposed once to [B, K, G*L, H] (the G query heads that
  share a key/value head are folded into the query rows), so both products are
  plain batched matmuls over B*K and the grouped-query sum needs no reshape;
- the softmax is normalised after the second product (on [.., L, H], not on
  [.., L, L]);
- the forward returns nothing but its output, which lets XLA:CPU fuse the two
  products and the softmax; the backward pass (flash-attention style) keeps
  only q, k, v and the output, recomputes the probabilities and regenerates the
  dropout mask from its key, so no [B, N, L, L] array survives the forward;
- dropout masks take one random byte per score (`dropout.keep_mask`).

Logits, softmax and accumulation are float32 whatever the input dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from embed_jax.models.dropout import apply_dropout


def _to_rows(x: jax.Array, num_kv_heads: int) -> jax.Array:
  """[B, L, N, H] -> [B, K, G*L, H]: the G = N/K heads sharing key/value head k, stacked as rows."""
  batch, length, num_heads, head_dim = x.shape
  groups = num_heads // num_kv_heads
  x = x.reshape(batch, length, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  return x.reshape(batch, num_kv_heads, groups * length, head_dim)


def _from_rows(x: jax.Array, length: int) -> jax.Array:
  """Inverse of `_to_rows`: [B, K, G*L, H] -> [B, L, K*G, H]."""
  batch, num_kv_heads, rows, head_dim = x.shape
  groups = rows // length
  x = x.reshape(batch, num_kv_heads, groups, length, head_dim).transpose(0, 3, 1, 2, 4)
  return x.reshape(batch, length, num_kv_heads * groups, head_dim)


def _kv(x: jax.Array) -> jax.Array:
  """[B, L, K, H] -> [B, K, L, H]."""
  return x.transpose(0, 2, 1, 3)


def _row_mask(mask: jax.Array, groups: int, length: int) -> jax.Array:
  """bool [B, 1, L or 1, L] -> [B, 1, G*L, L], matching the folded query rows."""
  mask = jnp.broadcast_to(mask, (mask.shape[0], 1, length, length))
  return jnp.tile(mask, (1, 1, groups, 1)) if groups > 1 else mask


def _scores(q: jax.Array, k: jax.Array, mask: jax.Array) -> jax.Array:
  """float32 [B, K, G*L, L]: scaled q.k, masked entries at float32's minimum."""
  scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
  logits = jnp.einsum("bkqh,bksh->bkqs", q, k, preferred_element_type=jnp.float32) * scale
  return jnp.where(mask, logits, jnp.finfo(jnp.float32).min)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, mask, rng, rate):
  return _forward(q, k, v, mask, rng, rate)


def _forward(q, k, v, mask, rng, rate):
  """Output [B, K, G*L, H] in q's dtype. Nothing but the output leaves this function, so
  XLA:CPU fuses the two products and the softmax between them."""
  scores = _scores(q, k, mask)
  weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
  total = jnp.sum(weights, axis=-1, keepdims=True)
  out = jnp.einsum("bkqs,bksh->bkqh", apply_dropout(weights, rng, rate).astype(v.dtype), v,
                   preferred_element_type=jnp.float32) / total
  return out.astype(q.dtype)


def _attention_fwd(q, k, v, mask, rng, rate):
  out = _forward(q, k, v, mask, rng, rate)
  return out, (q, k, v, mask, rng, out)


def _attention_bwd(rate, residuals, d_out):
  q, k, v, mask, rng, out = residuals
  probs = jax.nn.softmax(_scores(q, k, mask), axis=-1)
  f32 = jnp.float32
  d_v = jnp.einsum("bkqs,bkqh->bksh", apply_dropout(probs, rng, rate).astype(v.dtype), d_out,
                   preferred_element_type=f32)
  d_dropped = jnp.einsum("bkqh,bksh->bkqs", d_out, v, preferred_element_type=f32)
  d_probs = apply_dropout(d_dropped, rng, rate)  # the same mask and scale: the same key
  # Softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O).
  row_dot = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
  scale = 1.0 / jnp.sqrt(f32(q.shape[-1]))
  d_scores = jnp.where(mask, probs * (d_probs - row_dot), 0.0) * scale
  d_q = jnp.einsum("bkqs,bksh->bkqh", d_scores.astype(k.dtype), k, preferred_element_type=f32)
  d_k = jnp.einsum("bkqs,bkqh->bksh", d_scores.astype(q.dtype), q, preferred_element_type=f32)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def fused_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
  """softmax(q k^T / sqrt(H), masked) v with dropout on the probabilities: [B, L, N, H].

  Args:
    query: [B, L, N, H]; key, value: [B, L, K, H], N a multiple of K.
    mask: bool [B, 1, L, L] (or [B, 1, 1, L], keys only), every constraint
      included (padding, segments, causal, window). A query with no visible key attends uniformly to all
      keys, as the masked-softmax reference does.
    dropout_rate, dropout_rng: dropout on the probabilities (inverted scaling)
      when both are set, the rate rounded to 1/256 (`dropout.keep_probability`);
      the backward pass regenerates the mask from the key.
  """
  length, num_kv_heads = query.shape[1], key.shape[2]
  groups = query.shape[2] // num_kv_heads
  rate = float(dropout_rate) if dropout_rng is not None else 0.0
  rng = dropout_rng if rate > 0.0 else jax.random.key(0)
  out = _attention(_to_rows(query, num_kv_heads), _kv(key), _kv(value),
                   _row_mask(mask, groups, length), rng, rate)
  return _from_rows(out, length)
