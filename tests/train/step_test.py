"""The train step: GradCache equals direct autodiff; non-finite updates are skipped and counted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.models.dual_encoder import DualEncoderConfig
from embed_jax.models.sharded_init import init_dual_encoder, param_shardings
from embed_jax.models.transformer import DecoderConfig
from embed_jax.train import optimizer, state as state_lib, updater as updater_lib
from embed_jax.train.objective import ContrastiveObjective

from tests.train.token_batches import (CLOSE_X, CLOSE_Y, OPEN_X, OPEN_Y, VOCAB,
                                       delimited_texts)
CONFIG = DualEncoderConfig(
    encoder=DecoderConfig(vocab_size=VOCAB, d_model=16, num_layers=2, num_heads=2, max_length=16,
                          dropout_rate=0.1, attention_dropout_rate=0.1),
    pooling="eos", x_delimiter_ids=(OPEN_X, CLOSE_X), y_delimiter_ids=(OPEN_Y, CLOSE_Y))


def _batch(rng, batch_size, length=8, negatives=1):
  """Random pairs with delimiters and varied lengths (right-padded), numpy."""
  def side(open_id, close_id, shape):
    return delimited_texts(rng, open_id, close_id, shape, length)
  x, xm = side(OPEN_X, CLOSE_X, (batch_size,))
  y, ym = side(OPEN_Y, CLOSE_Y, (batch_size,))
  n, nm = side(OPEN_Y, CLOSE_Y, (batch_size, negatives))
  ids = rng.integers(0, 1000, size=batch_size).astype(np.int32)
  ids[1] = ids[0]  # A duplicate y text: masked as a negative.
  return {"x_tokens": x, "x_mask": xm, "y_tokens": y, "y_mask": ym,
          "neg_tokens": n, "neg_mask": nm, "y_ids": ids}


@pytest.fixture(scope="module")
def setup():
  mesh = partitioning.create_mesh(data=4, fsdp=2)
  module, params = init_dual_encoder(CONFIG, jax.random.key(0), mesh)
  shardings = param_shardings(module, mesh)
  tx, schedule = optimizer.make_optimizer(
      10, schedule=optimizer.learning_rate_schedule(10, learning_rate=1e-2, warmup_steps=0))
  batch = _batch(np.random.default_rng(0), 16)
  batch = {k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
  return mesh, module, params, shardings, tx, schedule, batch


def test_grad_cache_equals_direct_full_batch_grads_with_dropout(setup):
  mesh, module, params, shardings, tx, schedule, batch = setup
  step = updater_lib.Updater(ContrastiveObjective(module, mesh), tx, schedule, shardings,
                             grad_cache_chunks=2)
  rng = jax.random.PRNGKey(3)
  with partitioning.activate(mesh):
    cached = jax.jit(step.grad_cache_grads)(params, batch, rng)
    direct_fn = jax.jit(step.direct_grads)
    direct = direct_fn(params, batch, rng)
    other_dropout = direct_fn(params, batch, jax.random.PRNGKey(4))
  np.testing.assert_allclose(cached[0], direct[0], rtol=1e-6)
  for name in ("accuracy_x_to_y", "negative_cosine"):
    np.testing.assert_allclose(cached[1][name], direct[1][name], rtol=1e-6)
  flat_direct = jax.tree_util.tree_leaves_with_path(direct[2])
  flat_cached = jax.tree.leaves(cached[2])
  for (path, d), c in zip(flat_direct, flat_cached):
    np.testing.assert_allclose(np.asarray(c), np.asarray(d), atol=1e-5, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  # Dropout is on (another key gives another loss), and both passes replay the same masks.
  assert abs(float(other_dropout[0]) - float(direct[0])) > 1e-4
  assert float(jnp.abs(direct[2]["log_temp"])) > 0


class NaNOnMarkedBatch(ContrastiveObjective):
  """A step whose loss turns NaN on a batch marked by y_ids[0] == -1 (a fault injected for tests)."""

  def loss(self, embeddings, log_temp, batch):
    loss, metrics = super().loss(embeddings, log_temp, batch)
    return loss * jnp.where(batch["y_ids"][0] == -1, jnp.nan, 1.0), metrics


def test_nonfinite_batch_is_skipped_and_counted(setup):
  mesh, module, params, shardings, tx, schedule, batch = setup
  step = updater_lib.Updater(NaNOnMarkedBatch(module, mesh), tx, schedule, shardings)
  abstract_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  st_shardings = state_lib.state_shardings(tx, abstract_params, shardings, mesh)
  abstract = state_lib.abstract_state(tx, abstract_params, st_shardings)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  compiled = updater_lib.CompiledSteps(step, st_shardings, abstract, abstract_batch)
  state = state_lib.init_state(jax.tree.map(jnp.copy, params), tx, 0, st_shardings)
  # The injected fault: a batch whose y_ids[0] is -1 makes the loss NaN.
  bad = dict(batch)
  ids = np.asarray(batch["y_ids"]).copy()
  ids[0] = -1
  bad["y_ids"] = jax.device_put(ids, batch["y_ids"].sharding)

  state, m1 = compiled(state, batch)
  before = jax.tree.map(np.asarray, (state.params, state.opt_state))
  state, m2 = compiled(state, bad)
  assert not np.isfinite(float(m2["loss"]))
  assert int(m2["skipped"]) == 1 and int(state.nonfinite_total) == 1
  assert int(state.nonfinite_consecutive) == 1 and int(state.step) == 2
  after = jax.tree.map(np.asarray, (state.params, state.opt_state))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
  state, m3 = compiled(state, batch)
  assert int(m1["skipped"]) == 0 and int(m3["skipped"]) == 0 and np.isfinite(float(m3["loss"]))
  assert int(state.nonfinite_total) == 1 and int(state.nonfinite_consecutive) == 0
  changed = [not np.array_equal(a, np.asarray(b))
             for a, b in zip(jax.tree.leaves(before[0]), jax.tree.leaves(state.params))]
  assert all(changed)


def test_weight_decay_mask_spares_norms_biases_and_temperature(setup):
  params = setup[2]
  mask = optimizer.weight_decay_mask(params)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert not flat["['log_temp']"]
  assert any(v for k, v in flat.items() if k.endswith("['kernel']"))
  assert any(k.endswith("['embedding']") and v for k, v in flat.items())
  assert not any(v for k, v in flat.items() if k.endswith(("['bias']", "['scale']")))


def test_schedule_warms_up_then_decays():
  for decay in ("cosine", "linear"):
    schedule = optimizer.learning_rate_schedule(100, learning_rate=1.0, warmup_steps=10, decay=decay)
    values = [float(schedule(s)) for s in (0, 5, 10, 55, 100)]
    assert values[0] == 0 and values[1] == pytest.approx(0.5) and values[2] == pytest.approx(1.0)
    assert 0 < values[3] < 1 and values[4] == pytest.approx(0.0, abs=1e-6)


def test_bfloat16_compute_gives_the_float32_gradients_within_its_precision(setup):
  """Mixed precision (float32 params, bfloat16 products accumulated in float32): the same loss
  and, leaf by leaf, gradients pointing the same way as float32's."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  mesh, module, params, shardings, tx, schedule, batch = setup
  low = type(module)(dataclasses.replace(
      CONFIG, encoder=dataclasses.replace(CONFIG.encoder, dtype="bfloat16")))
  results = []
  for m in (module, low):
    step = updater_lib.Updater(ContrastiveObjective(m, mesh, dropout=False), tx, schedule,
                               shardings)
    with partitioning.activate(mesh):
      results.append(jax.jit(step.direct_grads)(params, batch, jax.random.PRNGKey(0)))
  (loss, _, grads), (low_loss, _, low_grads) = results
  np.testing.assert_allclose(low_loss, loss, rtol=2e-2)
  for (path, g), h in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(low_grads)):
    assert h.dtype == g.dtype == jnp.float32
    g, h = np.ravel(g), np.ravel(h)
    if np.linalg.norm(g) > 1e-6:
      cosine = g @ h / (np.linalg.norm(g) * np.linalg.norm(h))
      assert cosine > 0.98, (jax.tree_util.keystr(path), cosine)
