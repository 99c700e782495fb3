"""The dual encoder: one shared encoder, per-side delimiters, projection, norm, temperature."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.models import (
    Decoder, DecoderConfig, DualEncoder, DualEncoderConfig, init_params, param_shardings)
from embed_jax.models.dual_encoder import l2_normalize

X_IDS, Y_IDS = (3, 4), (5, 6)
CONFIG = DualEncoderConfig(
    encoder=DecoderConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, max_length=16),
    pooling="eos", x_delimiter_ids=X_IDS, y_delimiter_ids=Y_IDS, projection_dim=16)
MODEL = DualEncoder(CONFIG)
# Both closing delimiters in each row, at different places (row 1 left-padded).
TOKENS = np.array([[3, 10, 11, 4, 12, 6, 13, 0],
                   [0, 0, 5, 20, 6, 21, 4, 22]], np.int32)
MASK = np.array([[1, 1, 1, 1, 1, 1, 1, 0],
                 [0, 0, 1, 1, 1, 1, 1, 1]], np.int32)
X_CLOSE_AT, Y_CLOSE_AT = [3, 6], [5, 4]


@pytest.fixture(scope="module")
def params():
  return init_params(MODEL, jax.random.key(0, impl="rbg"))  # rbg: fast to compile on CPU


@pytest.fixture(scope="module")
def embed():
  """A jitted embed function and the number of times it was traced."""
  traces = []

  def embed_fn(params, tokens, mask, side):
    traces.append(tokens.shape)
    return MODEL.apply({"params": params}, tokens, mask, side=side, method=DualEncoder.embed)
  return jax.jit(embed_fn, static_argnames="side"), traces


def test_one_encoder_serves_both_sides(params):
  assert set(params) == {"encoder", "projection", "log_temp"}
  assert params["projection"]["kernel"].shape == (32, 16)


def test_each_side_pools_at_its_closing_delimiter(params, embed):
  embed_fn, _ = embed
  hidden = jax.jit(Decoder(CONFIG.encoder).apply)({"params": params["encoder"]}, TOKENS, MASK)
  kernel = params["projection"]["kernel"]
  for side, close_at in (("x", X_CLOSE_AT), ("y", Y_CLOSE_AT)):
    expected = l2_normalize(hidden[np.arange(2), close_at] @ kernel)
    got = embed_fn(params, TOKENS, MASK, side)
    assert got.shape == (2, 16) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(got, axis=-1), 1.0, rtol=1e-5)


def test_jitted_embed_traces_once_per_shape(params, embed):
  embed_fn, traces = embed
  embed_fn(params, TOKENS, MASK, "x")  # traced here or by an earlier test
  before = len(traces)
  rng = np.random.RandomState(1)
  for _ in range(3):
    tokens = rng.randint(7, 64, size=TOKENS.shape).astype(np.int32)
    tokens[:, -1] = X_IDS[1]
    embed_fn(params, tokens, np.ones_like(tokens), "x")
  assert len(traces) == before
  embed_fn(params, TOKENS[:1], MASK[:1], "x")
  assert len(traces) == before + 1 and traces[-1] == (1, 8)  # a new shape does trace


def test_call_returns_both_sides_and_the_clamped_log_temperature(params, embed):
  embed_fn, _ = embed
  x, y, log_temp = jax.jit(MODEL.apply)({"params": params}, TOKENS, MASK, TOKENS, MASK)
  np.testing.assert_allclose(x, embed_fn(params, TOKENS, MASK, "x"), atol=1e-6)
  np.testing.assert_allclose(y, embed_fn(params, TOKENS, MASK, "y"), atol=1e-6)
  assert float(log_temp) == pytest.approx(math.log(1 / 0.07), rel=1e-6)


def test_temperature_is_clamped_at_max_logit_scale(params):
  def clamped(raw):
    variables = {"params": dict(params, log_temp=jnp.float32(raw))}
    return MODEL.apply(variables, method=DualEncoder.log_temperature)
  assert float(clamped(1.5)) == pytest.approx(1.5)
  assert float(clamped(math.log(500.0))) == pytest.approx(math.log(100.0))
  assert float(jax.grad(clamped)(1.5)) == 1.0
  assert float(jax.grad(clamped)(10.0)) == 0.0


def test_projection_and_temperature_shardings():
  shardings = param_shardings(MODEL, partitioning.create_mesh(data=2, fsdp=2, tensor=2))
  assert shardings["projection"]["kernel"].spec == jax.sharding.PartitionSpec("fsdp")
  assert shardings["log_temp"].spec == jax.sharding.PartitionSpec()
  assert shardings["encoder"]["token_embed"]["embedding"].spec == (
      jax.sharding.PartitionSpec("tensor", "fsdp"))


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="unknown pooling 'max'"):
    DualEncoderConfig(encoder=CONFIG.encoder, pooling="max")
  with pytest.raises(ValueError, match=r"x_delimiter_ids must be \(open_id, close_id\)"):
    DualEncoderConfig(encoder=CONFIG.encoder, x_delimiter_ids=(1, 2, 3))
  with pytest.raises(TypeError, match="must be a DecoderConfig or BertConfig"):
    DualEncoderConfig(encoder={"d_model": 8})
  assert DualEncoderConfig(encoder=CONFIG.encoder, y_delimiter_ids=[7, 8]).y_delimiter_ids == (7, 8)
  no_ids = DualEncoder(DualEncoderConfig(encoder=CONFIG.encoder))
  with pytest.raises(ValueError, match=r"pooling='eos' needs DualEncoderConfig.x_delimiter_ids"):
    jax.eval_shape(lambda: no_ids.init(jax.random.key(0), TOKENS, MASK, TOKENS, MASK))
