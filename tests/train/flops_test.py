"""The analytic model FLOPs agree with XLA's cost analysis of the compiled gradient, loosely."""

import jax
import numpy as np

from embed_jax import flops, partitioning
from embed_jax.models.dual_encoder import DualEncoderConfig
from embed_jax.models.sharded_init import init_dual_encoder, param_shardings
from embed_jax.models.transformer import DecoderConfig
from embed_jax.train import optimizer, updater as updater_lib
from embed_jax.train.objective import ContrastiveObjective

# Wide enough that matrix products dominate the elementwise work XLA also counts.
CONFIG = DualEncoderConfig(
    encoder=DecoderConfig(vocab_size=64, d_model=128, num_layers=2, num_heads=4, max_length=64),
    pooling="eos", x_delimiter_ids=(60, 61), y_delimiter_ids=(62, 63))
SHAPE = flops.StepShape(batch_size=8, x_length=32, y_length=64, num_negatives=1)


def test_analytic_flops_match_xla_cost_analysis_within_a_loose_factor():
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  module, params = init_dual_encoder(CONFIG, jax.random.key(0), mesh)
  tx, _ = optimizer.make_optimizer(10, schedule=optimizer.learning_rate_schedule(10))
  step = updater_lib.Updater(ContrastiveObjective(module, mesh, dropout=False), tx, None,
                             param_shardings(module, mesh))
  b, h = SHAPE.batch_size, SHAPE.num_negatives
  batch = {"x_tokens": np.full((b, SHAPE.x_length), 5, np.int32),
           "x_mask": np.ones((b, SHAPE.x_length), np.int32),
           "y_tokens": np.full((b, SHAPE.y_length), 5, np.int32),
           "y_mask": np.ones((b, SHAPE.y_length), np.int32),
           "neg_tokens": np.full((b, h, SHAPE.y_length), 5, np.int32),
           "neg_mask": np.ones((b, h, SHAPE.y_length), np.int32)}
  with partitioning.activate(mesh):
    compiled = jax.jit(step.direct_grads).lower(params, batch, jax.random.PRNGKey(0)).compile()
  measured = updater_lib.compiled_flops(compiled)
  analytic = flops.train_step_flops(CONFIG, params, SHAPE)
  assert measured > 0
  assert 0.7 < measured / analytic < 1.5, (measured, analytic)
  # The dense term dominates: 6 * N * tokens with N the non-embedding matrices.
  n = flops.matmul_params(params)
  assert n == 2 * (4 * 128 * 128 + 2 * 4 * 128 * 128)
  assert 6 * n * SHAPE.tokens < analytic < 1.5 * 6 * n * SHAPE.tokens


def test_real_token_flops_equal_the_padded_count_when_nothing_is_padding():
  params = jax.eval_shape(lambda: init_dual_encoder(CONFIG, jax.random.key(0))[1])
  b, h = SHAPE.batch_size, SHAPE.num_negatives
  full = flops.real_train_step_flops(CONFIG, params, np.full(b, SHAPE.x_length),
                                     np.full(b, SHAPE.y_length), np.full((b, h), SHAPE.y_length))
  assert full == flops.train_step_flops(CONFIG, params, SHAPE)
  # Halving every length halves the dense term and quarters attention (the loss term, which
  # does not depend on lengths, is tiny here).
  half = flops.real_train_step_flops(CONFIG, params, np.full(b, SHAPE.x_length // 2),
                                     np.full(b, SHAPE.y_length // 2),
                                     np.full((b, h), SHAPE.y_length // 2))
  assert 0.25 * full < half < 0.5 * full
