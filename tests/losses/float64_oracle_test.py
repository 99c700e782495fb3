"""The losses against an independent float64 numpy computation with closed-form gradients.

The reference (the oracle of the sharded tests) is checked here on ordinary data;
gather and ring also on strongly paired data (tiny loss), where float32
cancellation in `logsumexp - positive` would show.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from scipy.special import logsumexp

from embed_jax import partitioning
from embed_jax.losses import contrastive_loss


def float64_loss(x, y, log_temp, hard=None, ids=None):
  """(loss, {x, y, log_temp, hard gradients}, metrics) in float64, written from the definitions."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  batch, dim = x.shape
  scale = np.exp(np.float64(log_temp))
  eye = np.eye(batch, dtype=bool)
  duplicate = np.zeros_like(eye) if ids is None else (ids[:, None] == ids[None, :]) & ~eye
  cosine = x @ y.T
  logits = np.where(duplicate, -np.inf, scale * cosine)
  hard_flat = np.zeros((0, dim)) if hard is None else hard.astype(np.float64).reshape(-1, dim)
  hard_logits = scale * x @ hard_flat.T
  row_logits = np.concatenate([logits, hard_logits], axis=1)
  positive = np.diag(logits)
  row_lse = logsumexp(row_logits, axis=1)
  col_lse = logsumexp(logits, axis=0)
  loss = (np.sum(row_lse - positive) + np.sum(col_lse - positive)) / (2 * batch)

  row_prob = np.exp(row_logits - row_lse[:, None])
  col_prob = np.exp(logits - col_lse[None, :])
  d_logits = (row_prob[:, :batch] + col_prob - 2 * eye) / (2 * batch)
  d_hard_logits = row_prob[:, batch:] / (2 * batch)
  grads = {
      "x": scale * (d_logits @ y + d_hard_logits @ hard_flat),
      "y": scale * d_logits.T @ x,
      "log_temp": np.sum(d_logits * scale * cosine) + np.sum(d_hard_logits * hard_logits),
  }
  if hard is not None:
    grads["hard"] = (scale * d_hard_logits.T @ x).reshape(hard.shape)

  negative = ~eye & ~duplicate
  best_row = np.max(np.concatenate([np.where(negative, logits, -np.inf), hard_logits], 1), axis=1)
  best_col = np.max(np.where(negative, logits, -np.inf), axis=0)
  metrics = {
      "accuracy_x_to_y": np.mean(positive > best_row),
      "accuracy_y_to_x": np.mean(positive > best_col),
      "logit_scale": scale,
      "temperature": 1 / scale,
      "positive_cosine": np.mean(np.diag(cosine)),
      "negative_cosine": np.sum(np.where(negative, cosine, 0)) / max(np.sum(negative), 1),
  }
  return loss, grads, metrics


@functools.lru_cache(maxsize=None)
def loss_and_grads(impl: str, mesh_shape, tile_size: int = 4):
  """jit(value_and_grad) of contrastive_loss w.r.t. x, y, log_temp, hard; shared across tests."""
  mesh = None if mesh_shape is None else partitioning.create_mesh(*mesh_shape)

  def loss(x, y, log_temp, hard, ids):
    return contrastive_loss(x, y, log_temp, mesh=mesh, impl=impl, hard_negatives=hard,
                            mask_duplicates=ids, tile_size=tile_size)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def check_against_float64(impl, mesh_shape, inputs, log_temp, assert_close, rtol):
  x, y, hard, ids = inputs
  (loss, metrics), (dx, dy, d_log_temp, d_hard) = loss_and_grads(impl, mesh_shape)(
      x, y, np.float32(log_temp), hard, ids)
  expected_loss, expected_grads, expected_metrics = float64_loss(x, y, log_temp, hard, ids)
  assert_close(loss, expected_loss, rtol, "loss")
  assert_close(dx, expected_grads["x"], rtol, "d x")
  assert_close(dy, expected_grads["y"], rtol, "d y")
  assert_close(d_log_temp, expected_grads["log_temp"], rtol, "d log_temp")
  if hard is not None:
    assert_close(d_hard, expected_grads["hard"], rtol, "d hard_negatives")
  for name, value in expected_metrics.items():
    assert_close(metrics[name], value, 1e-5, name)


@pytest.mark.parametrize("hard,duplicates", [(0, False), (2, False), (2, True)])
def test_reference_matches_float64(make_pairs, assert_close, hard, duplicates):
  inputs = make_pairs(12, hard=hard, duplicates=duplicates, seed=hard + duplicates)
  check_against_float64("reference", None, inputs, np.log(10.0), assert_close, 1e-5)


@pytest.mark.parametrize("impl,mesh_shape", [("ring", None), ("ring", (4, 2, 1)), ("gather", (4, 2, 1))])
def test_strongly_paired_data_is_accurate_in_float32(make_pairs, assert_close, impl, mesh_shape):
  # Loss ~5e-7 at logit scale 40, where float32 `lse - positive` (about 40) would be
  # off by ~4e-6 absolute, and 1 - p_positive by ~6e-8.
  inputs = make_pairs(24, dim=16, hard=2, pairing=20.0, seed=3)
  expected_loss = float64_loss(*inputs[:2], np.log(40.0), *inputs[2:])[0]
  assert 1e-7 < expected_loss < 1e-5
  check_against_float64(impl, mesh_shape, inputs, np.log(40.0), assert_close, 1e-5)
