"""Token positions: the defaults the encoders use, and rotary position embedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def default_positions(mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
  """Position of every token among the real tokens of its text: int32 [B, L].

  Without `segment_ids`: cumsum(mask) - 1, clipped at 0, so a left-padded text
  starts at 0 at its first real token. With `segment_ids` (packed texts, each
  a contiguous run of one id): the offset from the start of the token's run.
  Padding positions get small valid values; their outputs are never used.
  """
  mask = mask.astype(jnp.int32)
  if segment_ids is None:
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
  index = jnp.broadcast_to(jnp.arange(segment_ids.shape[-1], dtype=jnp.int32), segment_ids.shape)
  previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  run_start = jax.lax.cummax(jnp.where(segment_ids != previous, index, 0), axis=1)
  return (index - run_start).astype(jnp.int32)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding in the `transformers` rotate-half convention.

  The head dimension is split into halves (x1, x2) rotated pairwise by angle
  position * theta^(-2i/head_dim): [x1 cos - x2 sin, x2 cos + x1 sin].
  Computed in float32, returned in x's dtype.

  Args:
    x: [B, L, N, head_dim] queries or keys (head_dim even).
    positions: [B, L] integer positions.
    theta: the base of the rotation frequencies (rope_theta).
  """
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, head_dim / 2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
