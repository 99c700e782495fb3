"""gather and ring against the dense reference: loss, every gradient and the metrics.

Per-shard row counts (3, 5, 7) are not powers of two and the tiles (2, 3) do
not divide them, so the clamped last tile and its masked overlap are exercised,
in both the in-batch columns and the hard-negative columns.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.losses import contrastive_loss

# (mesh shape (data, fsdp, tensor) or None for one device, rows per batch shard,
#  ring tile, hard negatives per pair, duplicate ids)
CASES = {
    "8x1x1-hard-dup": ((8, 1, 1), 3, 2, 2, True),
    "4x2x1-hard-dup": ((4, 2, 1), 5, 2, 3, True),
    "2x2x2-hard-dup": ((2, 2, 2), 7, 3, 1, True),
    "2x2x2-tile-above-rows": ((2, 2, 2), 5, 8, 0, False),
    "one-device-hard-dup": (None, 10, 4, 2, True),
}
IMPLS = ("reference", "gather", "ring")


@functools.lru_cache(maxsize=None)
def compiled(impl: str, mesh_shape, tile_size: int):
  """jit(value_and_grad) w.r.t. x, y, log_temp, hard negatives; ids are an argument, so
  the same compiled function serves any duplicate pattern."""
  mesh = None if mesh_shape is None else partitioning.create_mesh(*mesh_shape)

  def loss(x, y, log_temp, hard, ids):
    return contrastive_loss(x, y, log_temp, mesh=mesh, impl=impl, hard_negatives=hard,
                            mask_duplicates=ids, tile_size=tile_size)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def batch_shards(mesh_shape) -> int:
  return 1 if mesh_shape is None else mesh_shape[0] * mesh_shape[1]


@functools.lru_cache(maxsize=None)
def results(case: str, make_pairs):
  """{impl: ((loss, metrics), grads)} for one case, computed once for all tests."""
  mesh_shape, rows, tile, hard, duplicates = CASES[case]
  x, y, negatives, ids = make_pairs(rows * batch_shards(mesh_shape), hard=hard,
                                    duplicates=duplicates, seed=rows + hard)
  log_temp = np.float32(np.log(8.0))
  return {impl: compiled(impl, mesh_shape, tile)(x, y, log_temp, negatives, ids) for impl in IMPLS}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", ["gather", "ring"])
def test_loss_and_gradients_match_reference(make_pairs, assert_close, case, impl):
  out = results(case, make_pairs)
  (loss, _), grads = out[impl]
  (expected_loss, _), expected_grads = out["reference"]
  assert_close(loss, expected_loss, name="loss")
  for name, grad, expected in zip(("x", "y", "log_temp", "hard_negatives"), grads, expected_grads):
    if expected is not None:
      assert_close(grad, expected, name=f"d {name}")


@pytest.mark.parametrize("case", CASES)
def test_metrics_are_the_same_for_every_impl(make_pairs, case):
  out = results(case, make_pairs)
  expected = out["reference"][0][1]
  assert set(expected) == {"accuracy_x_to_y", "accuracy_y_to_x", "logit_scale", "temperature",
                           "positive_cosine", "negative_cosine"}
  for impl in ("gather", "ring"):
    metrics = out[impl][0][1]
    assert set(metrics) == set(expected)
    for name in expected:
      # Mean cosines can be near 0, so they are compared on the scale of a cosine (1).
      np.testing.assert_allclose(metrics[name], expected[name], rtol=1e-6, atol=1e-6,
                                 err_msg=f"{impl} {name}")


def test_rows_without_any_negative(make_pairs, assert_close):
  # Every y is a duplicate of every other: the y->x columns have no negative at
  # all, the x->y rows only their hard negatives. No NaN, and the same as the reference.
  mesh_shape, rows, tile, hard, _ = CASES["one-device-hard-dup"]
  x, y, negatives, _ = make_pairs(rows, hard=hard, seed=7)
  ids = np.zeros(rows, np.int32)
  out = {impl: compiled(impl, mesh_shape, tile)(x, y, np.float32(2.0), negatives, ids)
         for impl in IMPLS}
  for impl in ("gather", "ring"):
    assert_close(out[impl][0][0], out["reference"][0][0], name=f"{impl} loss")
    for grad, expected in zip(out[impl][1], out["reference"][1]):
      assert_close(grad, expected, name=f"{impl} gradient")
    assert float(out[impl][0][1]["negative_cosine"]) == 0.0
