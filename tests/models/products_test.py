"""Low-precision products accumulate in float32 in both passes; float32 ones are plain tensordots."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax.models.products import tensordot_f32_accumulate


@pytest.mark.parametrize("x_shape,kernel_shape,contracted", [
    ((3, 5, 8), (8, 6), 1),          # [B, L, D] x [D, F]
    ((3, 5, 8), (8, 2, 4), 1),       # a query projection: [D, heads, head_dim]
    ((3, 5, 2, 4), (2, 4, 8), 2),    # an output projection: [heads, head_dim, D]
])
def test_bfloat16_values_and_gradients_match_float32_autodiff(x_shape, kernel_shape, contracted):
  rng = np.random.RandomState(0)
  x = rng.normal(size=x_shape).astype(np.float32)
  kernel = rng.normal(size=kernel_shape).astype(np.float32)
  out_shape = x_shape[:len(x_shape) - contracted] + kernel_shape[contracted:]
  cotangent = rng.normal(size=out_shape).astype(np.float32)
  axes = (tuple(range(len(x_shape) - contracted, len(x_shape))), tuple(range(contracted)))

  def reference(x, kernel):
    return jnp.sum(jnp.tensordot(x, kernel, axes=axes) * cotangent)

  def low(x, kernel):
    y = tensordot_f32_accumulate(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), contracted)
    assert y.dtype == jnp.bfloat16
    return jnp.sum(y.astype(jnp.float32) * cotangent)

  expected, expected_grads = jax.value_and_grad(reference, argnums=(0, 1))(x, kernel)
  got, got_grads = jax.jit(jax.value_and_grad(low, argnums=(0, 1)))(x, kernel)
  scale = np.abs(expected_grads[0]).max()
  np.testing.assert_allclose(got, expected, rtol=3e-2, atol=3e-2 * np.abs(cotangent).sum())
  for g, e in zip(got_grads, expected_grads):
    assert g.shape == e.shape
    np.testing.assert_allclose(g, e, atol=3e-2 * max(scale, np.abs(e).max()))


def test_bfloat16_backward_products_take_bfloat16_operands():
  """Both gradient products read bfloat16 operands and write float32 (plain autodiff of a
  float32-accumulating product would convert the operands and multiply in float32)."""
  x = jnp.ones((4, 8), jnp.bfloat16)
  kernel = jnp.ones((8, 16), jnp.bfloat16)
  grad = jax.grad(lambda x, k: jnp.sum(tensordot_f32_accumulate(x, k, 1).astype(jnp.float32)),
                  argnums=(0, 1))
  signatures = re.findall(r"dot_general.*: \((tensor<\S+>), (tensor<\S+>)\) -> (tensor<\S+>)",
                          jax.jit(grad).lower(x, kernel).as_text())
  assert len(signatures) == 2
  for lhs, rhs, out in signatures:
    assert lhs.endswith("xbf16>") and rhs.endswith("xbf16>") and out.endswith("xf32>")


def test_float32_is_a_plain_product():
  x = np.arange(12, dtype=np.float32).reshape(3, 4)
  kernel = np.arange(8, dtype=np.float32).reshape(4, 2)
  np.testing.assert_array_equal(tensordot_f32_accumulate(x, kernel, 1), x @ kernel)
