"""Attention masks (padding, segments, causal, window), every attention path, positions, RoPE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax.models import attention
from embed_jax.models.positions import apply_rope, default_positions

B, L, N, K, H = 2, 9, 4, 2, 8
KEY_MASK = np.array([[1] * 7 + [0] * 2, [0] * 2 + [1] * 7], np.int32)
SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [0, 0, 1, 1, 1, 1, 2, 2, 2]], np.int32)


def _qkv(seed=0):
  rng = np.random.RandomState(seed)
  return (rng.normal(size=(B, L, N, H)).astype(np.float32),
          rng.normal(size=(B, L, K, H)).astype(np.float32),
          rng.normal(size=(B, L, K, H)).astype(np.float32))


def _numpy_attention(q, k, v, key_mask, segments, causal, window):
  """Loop oracle: each query row softmaxes over the keys it may see."""
  out = np.zeros_like(q)
  for b in range(B):
    for n in range(N):
      kv = n // (N // K)
      for i in range(L):
        seen = [j for j in range(L)
                if key_mask[b, j] and (segments is None or segments[b, i] == segments[b, j] > 0)
                and (not causal or j <= i) and (window is None or abs(i - j) < window)]
        if not seen:
          continue
        logits = np.array([q[b, i, n] @ k[b, j, kv] for j in seen]) / np.sqrt(H)
        weights = np.exp(logits - logits.max())
        out[b, i, n] = (weights / weights.sum()) @ v[b, seen, kv]
  return out


def _seen_rows(key_mask, segments, causal, window):
  """bool [B, L]: query rows with at least one visible key (others are unspecified)."""
  mask = np.asarray(attention.padding_and_segment_mask(key_mask, segments)
                    & attention.structural_mask(L, causal, window))[:, 0]
  return mask.any(-1)


@pytest.mark.parametrize("causal,window,segments", [
    (False, None, None), (True, None, None), (True, 3, None), (False, 2, None),
    (True, None, SEGMENTS), (False, None, SEGMENTS)])
def test_both_paths_match_a_loop_oracle(causal, window, segments):
  q, k, v = _qkv()
  expected = _numpy_attention(q, k, v, KEY_MASK, segments, causal, window)
  mask = attention.padding_and_segment_mask(KEY_MASK, segments)
  fast = attention.dot_product_attention(q, k, v, mask, causal=causal, sliding_window=window)
  jax_path = attention.dot_product_attention(q, k, v, mask, causal=causal, sliding_window=window,
                                             implementation="xla")
  explicit = attention.explicit_attention(
      q, k, v, mask & attention.structural_mask(L, causal, window))
  rows = _seen_rows(KEY_MASK, segments, causal, window)
  np.testing.assert_allclose(np.asarray(fast)[rows], expected[rows], atol=1e-5)
  np.testing.assert_allclose(np.asarray(jax_path)[rows], expected[rows], atol=1e-5)
  np.testing.assert_allclose(np.asarray(explicit)[rows], expected[rows], atol=1e-5)


@pytest.mark.parametrize("implementation", [None, "xla"])  # fused on CPU; explicit with dropout
def test_attention_dropout_is_random_but_reproducible(implementation):
  q, k, v = _qkv()
  mask = attention.padding_and_segment_mask(KEY_MASK)
  plain = attention.dot_product_attention(q, k, v, mask, causal=True, implementation=implementation)

  # rbg keys: XLA on CPU compiles threefry for 5-d shapes slowly; the code path is the same.
  @jax.jit
  def dropped(seed):
    return attention.dot_product_attention(
        q, k, v, mask, causal=True, dropout_rate=0.5,
        dropout_rng=jax.random.key(seed, impl="rbg"), implementation=implementation)
  a, a_again, b = dropped(0), dropped(0), dropped(1)
  np.testing.assert_array_equal(a, a_again)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0.1
  assert np.abs(np.asarray(a) - np.asarray(plain)).max() > 0.1
  # Without an rng the rate is ignored (deterministic evaluation).
  np.testing.assert_array_equal(
      attention.dot_product_attention(q, k, v, mask, causal=True, dropout_rate=0.5,
                                      implementation=implementation), plain)


def test_default_positions_under_padding_and_packing():
  left = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(default_positions(left), [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]])
  packed = np.array([[1, 1, 1, 2, 2, 3, 0, 0]])
  np.testing.assert_array_equal(
      default_positions(packed > 0, packed)[0, :6], [0, 1, 2, 0, 1, 0])


def test_rope_scores_depend_only_on_relative_position():
  rng = np.random.RandomState(0)
  q, k = rng.normal(size=(2, 1, 1, 1, 16)).astype(np.float32)

  def score(m, n):
    rq = apply_rope(q, jnp.array([[m]]), 10000.0)
    rk = apply_rope(k, jnp.array([[n]]), 10000.0)
    return float(jnp.sum(rq * rk))
  assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-4)
  assert abs(score(5, 2) - score(5, 4)) > 1e-3
  np.testing.assert_allclose(apply_rope(q, jnp.array([[0]]), 10000.0), q)
