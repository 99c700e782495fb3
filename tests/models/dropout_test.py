"""Byte-mask dropout: the rounded rate, reproducibility, scaling, the module."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax.models import dropout


def test_mask_keeps_the_rounded_probability():
  shape = (4, 2, 256, 250)  # a last dimension that is not a multiple of 4
  keep = np.asarray(dropout.keep_mask(jax.random.key(0), 0.1, shape))
  assert keep.shape == shape
  assert dropout.keep_probability(0.1) == 1 - 26 / 256
  assert abs(keep.mean() - dropout.keep_probability(0.1)) < 2e-3
  # Each of the four bytes of a random word is a fair draw, and neighbours are independent
  # (262,144 draws per column: tolerances at about 5 standard deviations).
  columns = np.asarray(dropout.keep_mask(jax.random.key(5), 0.1, (512, 512, 8)))
  for column in range(8):
    assert abs(columns[..., column].mean() - dropout.keep_probability(0.1)) < 3e-3
  both = (columns[..., 0] & columns[..., 1]).mean()
  assert abs(both - dropout.keep_probability(0.1) ** 2) < 4e-3
  again = np.asarray(dropout.keep_mask(jax.random.key(0), 0.1, shape))
  np.testing.assert_array_equal(keep, again)
  assert not np.array_equal(keep, np.asarray(dropout.keep_mask(jax.random.key(1), 0.1, shape)))


def test_apply_dropout_is_unbiased_and_keeps_dtype():
  x = jnp.ones((512, 512), jnp.bfloat16)
  dropped = dropout.apply_dropout(x, jax.random.key(2), 0.5)
  assert dropped.dtype == jnp.bfloat16
  values = np.unique(np.asarray(dropped, np.float32))
  np.testing.assert_allclose(values, [0.0, 2.0])
  assert abs(float(jnp.mean(dropped.astype(jnp.float32))) - 1.0) < 1e-2
  np.testing.assert_array_equal(dropout.apply_dropout(x, jax.random.key(2), 0.0), x)


def test_rates_outside_zero_one_are_refused():
  with pytest.raises(ValueError, match="dropout rate 1.0"):
    dropout.keep_probability(1.0)
  with pytest.raises(ValueError, match="dropout rate -0.1"):
    dropout.drop_threshold(-0.1)


def test_module_is_identity_when_deterministic():
  x = jnp.arange(12.0).reshape(3, 4)
  module = dropout.Dropout(0.3)
  np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
  train = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  assert not np.array_equal(train, x)
  with pytest.raises(Exception, match="dropout"):
    module.apply({}, x, deterministic=False)
