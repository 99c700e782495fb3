"""The objective's loss terms through the updater: GradCache equals the direct step with every
term on, a frozen guide masks planted false negatives, each objective trains, bad settings fail
before the first step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.errors import ConfigError
from embed_jax.models.dual_encoder import DualEncoderConfig
from embed_jax.models.sharded_init import init_dual_encoder, param_shardings
from embed_jax.models.transformer import DecoderConfig
from embed_jax.train import optimizer, updater as updater_lib
from embed_jax.train.objective import ContrastiveObjective, GuideModel

from tests.train.token_batches import (CLOSE_X, CLOSE_Y, OPEN_X, OPEN_Y, VOCAB,
                                       delimited_texts)


def config(d_model, layers, dropout):
  return DualEncoderConfig(
      encoder=DecoderConfig(vocab_size=VOCAB, d_model=d_model, num_layers=layers, num_heads=2,
                            max_length=16, dropout_rate=dropout, attention_dropout_rate=dropout),
      pooling="eos", x_delimiter_ids=(OPEN_X, CLOSE_X), y_delimiter_ids=(OPEN_Y, CLOSE_Y))


def make_batch(rng, batch_size, length=8, negatives=2):
  """Random pairs with delimiters and varied lengths, a missing hard negative, teacher scores."""
  def side(open_id, close_id, shape):
    return delimited_texts(rng, open_id, close_id, shape, length)
  x, xm = side(OPEN_X, CLOSE_X, (batch_size,))
  y, ym = side(OPEN_Y, CLOSE_Y, (batch_size,))
  n, nm = side(OPEN_Y, CLOSE_Y, (batch_size, negatives))
  n[3, 1], nm[3, 1] = 0, 0  # a missing hard negative (all padding)
  ids = rng.integers(0, 1000, size=batch_size).astype(np.int32)
  ids[1] = ids[0]
  teacher = rng.normal(size=(batch_size, 1 + negatives)).astype(np.float32)
  teacher[:, 0] += 2.0
  return {"x_tokens": x, "x_mask": xm, "y_tokens": y, "y_mask": ym, "neg_tokens": n,
          "neg_mask": nm, "y_ids": ids, "teacher_scores": teacher}


EVERY_TERM = dict(matryoshka_dims=(8, 16), matryoshka_weights=(1.0, 0.5),
                  directions=("x->y", "y->x", "x->x", "y->y"), partition="joint",
                  guide_margin=0.1, false_negative_margin=0.5, distill="kl", distill_weight=0.5)


@pytest.fixture(scope="module")
def setup():
  mesh = partitioning.create_mesh(data=2, fsdp=2, devices=jax.devices()[:4])
  module, params = init_dual_encoder(config(16, 1, 0.1), jax.random.key(0), mesh)
  guide_module, guide_params = init_dual_encoder(config(8, 1, 0.0), jax.random.key(1), mesh)
  guide = GuideModel(guide_module, "test guide")
  shardings = param_shardings(module, mesh)
  put = lambda b: {k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim))
                   for k, v in b.items()}
  return dict(mesh=mesh, module=module, params=params, guide=guide,
              frozen={"guide": guide_params}, shardings=shardings, put=put)


def test_grad_cache_equals_direct_with_every_term_and_dropout(setup):
  s = setup
  # The dense loss: GradCache's equality does not depend on the impl, and the impls are
  # proven equal to the oracle in tests/losses.
  objective = ContrastiveObjective(s["module"], s["mesh"], loss_impl="reference",
                                   guide=s["guide"], **EVERY_TERM)
  step = updater_lib.Updater(objective, None, None, s["shardings"], grad_cache_chunks=4)
  batch = s["put"](make_batch(np.random.default_rng(0), 16))
  rng = jax.random.PRNGKey(3)
  with partitioning.activate(s["mesh"]):
    cached = jax.jit(step.grad_cache_grads)(s["params"], batch, rng, s["frozen"])
    direct = jax.jit(step.direct_grads)(s["params"], batch, rng, s["frozen"])
  np.testing.assert_allclose(cached[0], direct[0], rtol=1e-5)
  for name in ("masked_share", "distill_loss", "loss_dim8", "accuracy_x_to_y_dim8"):
    np.testing.assert_allclose(cached[1][name], direct[1][name], rtol=1e-5, atol=1e-7)
  assert 0 < float(direct[1]["masked_share"]) < 1 and float(direct[1]["distill_loss"]) > 0
  for (path, d), c in zip(jax.tree_util.tree_leaves_with_path(direct[2]),
                          jax.tree.leaves(cached[2])):
    np.testing.assert_allclose(np.asarray(c), np.asarray(d), atol=1e-5, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  assert float(jnp.abs(direct[2]["log_temp"])) > 0


def test_training_with_the_new_terms_lowers_the_loss(setup):
  # One run with Matryoshka, the four directions (joint), guided masking and
  # distillation at once: each term alone is proven against the oracle in
  # tests/losses. (false_negative_margin is left out: on a fresh model every
  # cosine is near 1, so the margin masks almost every candidate.)
  s = setup
  module, params = init_dual_encoder(config(16, 1, 0.0), jax.random.key(5), s["mesh"])
  options = {k: v for k, v in EVERY_TERM.items() if k != "false_negative_margin"}
  objective = ContrastiveObjective(module, s["mesh"], loss_impl="gather", guide=s["guide"],
                                   **options)
  tx, _ = optimizer.make_optimizer(
      20, schedule=optimizer.learning_rate_schedule(20, learning_rate=1e-2, warmup_steps=0))
  step = updater_lib.Updater(objective, tx, None, s["shardings"])
  from embed_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  state = state_lib.init_state(params, tx, 0, None)
  batch = s["put"](make_batch(np.random.default_rng(1), 16))
  with partitioning.activate(s["mesh"]):
    run = jax.jit(lambda st: step(st, batch, s["frozen"]))
    losses = []
    for _ in range(8):
      state, metrics = run(state)
      losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("options,message", [
    (dict(matryoshka_dims=(8, 32)), r"matryoshka_dims \(8, 32\): 32 is larger than the "
                                    r"embedding dimension 16"),
    (dict(matryoshka_dims=(8, 8)), "matryoshka_dims must be increasing positive ints"),
    (dict(matryoshka_dims=(4, 8), matryoshka_weights=(1.0,)), "matryoshka_weights must be 2 "),
    (dict(matryoshka_dims=(4, 8), matryoshka_weights=(1.0, -1.0)), "2 non-negative numbers"),
    (dict(directions=("x->z",)), r"directions must be distinct entries of \('x->y'"),
    (dict(partition="mixed"), r"partition must be one of \('joint', 'per_direction'\)"),
    (dict(distill="l2"), r"distill must be one of \('kl', 'margin_mse'\)"),
    (dict(distill="kl", distill_temperature=0.0), "distill_temperature must be a number > 0"),
    (dict(guide_margin=0.1), "guide_margin is set but there is no guide model"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_settings_fail_when_the_objective_is_built(setup, options, message):
  with pytest.raises(ConfigError, match=r"ContrastiveObjective\.\w*.*" + message):
    ContrastiveObjective(setup["module"], setup["mesh"], **options)


def test_distillation_without_teacher_scores_fails_before_the_first_step(setup):
  s = setup
  objective = ContrastiveObjective(s["module"], s["mesh"], distill="kl")
  step = updater_lib.Updater(objective, None, None, s["shardings"])
  batch = make_batch(np.random.default_rng(0), 16)
  del batch["teacher_scores"]
  with pytest.raises(ConfigError, match="needs a 'teacher_scores' field"):
    jax.eval_shape(step.direct_grads, s["params"], s["put"](batch), jax.random.PRNGKey(0))


def test_gist_matryoshka_recipe_builds_a_working_objective(setup):
  """runs/finetune_gist_matryoshka.gin parses, and the objective it binds scores a batch of
  384-wide embeddings (MiniLM's width) with its dims and its guide."""
  import gin  # pylint: disable=import-outside-toplevel
  from embed_jax import gin_config  # pylint: disable=import-outside-toplevel
  from embed_jax.models.dual_encoder import build_dual_encoder  # pylint: disable=import-outside-toplevel
  import dataclasses  # pylint: disable=import-outside-toplevel
  gin.clear_config(clear_constants=True)
  try:
    gin_config.parse(["runs/finetune_gist_matryoshka.gin"],
                     ["train.init_from='unused'", "train.guide_model='unused'",
                      "pairs/file_task.train='unused'", "pairs/file_task.validation='unused'"])
    module = build_dual_encoder(dataclasses.replace(config(16, 1, 0.0), projection_dim=384))
    objective = ContrastiveObjective(module, setup["mesh"], guide=setup["guide"])
  finally:
    gin.clear_config(clear_constants=True)
  assert objective.loss_options["matryoshka_dims"] == (64, 128, 256, 384)
  rng = np.random.default_rng(0)
  unit = lambda a: (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)
  x = unit(rng.normal(size=(16, 384)))
  outputs = {"x": x, "y": unit(x + rng.normal(size=(16, 384))),
             "neg": unit(rng.normal(size=(16, 1, 384))),
             "guide_x": unit(x[:, :8] + 0.5 * rng.normal(size=(16, 8))),
             "guide_y": unit(x[:, :8] + 0.5 * rng.normal(size=(16, 8))),
             "guide_neg": unit(rng.normal(size=(16, 1, 8)))}
  batch = {"neg_mask": np.ones((16, 1, 4), np.int32), "y_ids": np.arange(16, dtype=np.int32)}
  loss, metrics = jax.jit(objective.loss)(outputs, np.float32(3.0), batch)
  assert np.isfinite(float(loss)) and 0 < float(metrics["masked_share"]) < 1
  assert {"loss_dim64", "loss_dim384", "accuracy_x_to_y_dim64"} <= set(metrics)
