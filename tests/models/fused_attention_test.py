"""The fused attention against the masked-softmax reference: values and every gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax.models import attention, fused_attention

B, L, N, K, H = 2, 9, 4, 2, 8
KEY_MASK = np.array([[1] * 7 + [0] * 2, [0] * 2 + [1] * 7], np.int32)
# Padding positions (segment 0) see no key at all: their rows are fully masked.
SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [0, 0, 1, 1, 1, 1, 2, 2, 2]], np.int32)


def _inputs(num_kv_heads, seed=0):
  rng = np.random.RandomState(seed)
  return (rng.normal(size=(B, L, N, H)).astype(np.float32),
          rng.normal(size=(B, L, num_kv_heads, H)).astype(np.float32),
          rng.normal(size=(B, L, num_kv_heads, H)).astype(np.float32),
          rng.normal(size=(B, L, N, H)).astype(np.float32))


def _mask(segments, causal, window):
  return (attention.padding_and_segment_mask(KEY_MASK, segments)
          & attention.structural_mask(L, causal, window))


@pytest.mark.parametrize("num_kv_heads", [N, K, 1])
@pytest.mark.parametrize("causal,window,segments", [
    (False, None, None), (True, None, None), (True, 3, None), (False, 2, SEGMENTS),
    (True, None, SEGMENTS)])
def test_values_and_gradients_match_the_reference(num_kv_heads, causal, window, segments):
  q, k, v, cotangent = _inputs(num_kv_heads)
  mask = _mask(segments, causal, window)

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * cotangent)
  expected, expected_grads = jax.value_and_grad(
      loss(attention.explicit_attention), argnums=(0, 1, 2))(q, k, v)
  got, got_grads = jax.jit(jax.value_and_grad(
      loss(fused_attention.fused_attention), argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(
      fused_attention.fused_attention(q, k, v, mask), attention.explicit_attention(q, k, v, mask),
      atol=1e-5)
  for g, e in zip(got_grads, expected_grads):
    np.testing.assert_allclose(g, e, atol=1e-5)


@pytest.mark.parametrize("num_kv_heads", [N, K])
def test_dropout_backward_matches_autodiff_of_its_forward(num_kv_heads):
  """The hand-written backward, mask regenerated from the key, equals autodiff of the same
  forward computation (which draws the mask once)."""
  q, k, v, cotangent = _inputs(num_kv_heads, seed=1)
  mask = _mask(SEGMENTS, False, None)
  rng = jax.random.key(3)
  groups = N // num_kv_heads

  def autodiff_forward(q, k, v):
    out = fused_attention._forward(  # pylint: disable=protected-access
        fused_attention._to_rows(q, num_kv_heads), fused_attention._kv(k),  # pylint: disable=protected-access
        fused_attention._kv(v), fused_attention._row_mask(mask, groups, L), rng, 0.3)  # pylint: disable=protected-access
    return fused_attention._from_rows(out, L)  # pylint: disable=protected-access

  def fused(q, k, v):
    return fused_attention.fused_attention(q, k, v, mask, dropout_rate=0.3, dropout_rng=rng)

  expected, expected_vjp = jax.vjp(autodiff_forward, q, k, v)
  got, got_vjp = jax.vjp(fused, q, k, v)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  for g, e in zip(got_vjp(cotangent), expected_vjp(cotangent)):
    np.testing.assert_allclose(g, e, atol=1e-5)
  # Dropout changes the output; the same key gives the same output.
  plain = fused_attention.fused_attention(q, k, v, mask)
  assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 0.1
  np.testing.assert_array_equal(fused(q, k, v), got)


def test_bfloat16_inputs_keep_float32_softmax():
  q, k, v, _ = _inputs(K)
  mask = _mask(None, True, None)
  low = fused_attention.fused_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), mask)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32),
                             attention.explicit_attention(q, k, v, mask), atol=5e-2)



def test_a_keys_only_mask_broadcasts_over_the_queries():
  q, k, v, _ = _inputs(K)
  keys_only = attention.padding_and_segment_mask(KEY_MASK)  # [B, 1, 1, L]
  np.testing.assert_allclose(fused_attention.fused_attention(q, k, v, keys_only),
                             attention.explicit_attention(q, k, v, keys_only), atol=1e-5)
