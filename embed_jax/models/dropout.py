"""Dropout whose mask costs one random byte per element, not 32 bits.

`jax.random.bernoulli` draws 32 random bits per element; on CPU that made
dropout about a fifth of a MiniLM training step. Comparing one random byte with
a threshold (as FlashAttention does) makes the mask 9x cheaper, at the price of
a rate rounded to a multiple of 1/256 (0.1 drops 26/256 = 0.1016).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def drop_threshold(rate: float) -> int:
  """The byte value below which an element is dropped: round(rate * 256), at most 255."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate {rate} is not in [0, 1)")
  return min(255, round(rate * 256))


def keep_probability(rate: float) -> float:
  """The probability that an element is kept: 1 - drop_threshold(rate) / 256."""
  return 1.0 - drop_threshold(rate) / 256


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """bool `shape`, each True with `keep_probability(rate)`; the same mask for the same key.

  The random words are drawn with `shape`'s leading dimensions (last one / 4), so a
  batch-sharded mask is generated where its rows live.
  """
  *lead, width = shape
  words = jax.random.bits(rng, (*lead, -(-width // 4)), jnp.uint32)
  random_bytes = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(*lead, -1)[..., :width]
  return random_bytes >= drop_threshold(rate)


def apply_dropout(x: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
  """x with dropped elements zeroed and kept ones divided by the keep probability."""
  if rate == 0.0:
    return x
  return jnp.where(keep_mask(rng, rate, x.shape), x / keep_probability(rate), 0).astype(x.dtype)


class Dropout(nn.Module):
  """`nn.Dropout`'s interface (rate; `deterministic` at call; the "dropout" rng) with byte masks."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    return apply_dropout(x, self.make_rng("dropout"), self.rate)
