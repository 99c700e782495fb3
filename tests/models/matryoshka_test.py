"""2D Matryoshka: the loss over (layer, dim) pairs equals a numpy oracle; `num_layers=N` equals
a model cut to N layers; GradCache equals direct gradients on the mesh."""

import dataclasses

import jax
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.errors import ConfigError
from embed_jax.models import DecoderConfig, DualEncoder, DualEncoderConfig, init_params
from embed_jax.models.sharded_init import init_dual_encoder, param_shardings
from embed_jax.train import optimizer, updater as updater_lib
from embed_jax.train.objective import ContrastiveObjective

X_IDS, Y_IDS = (60, 61), (62, 63)
PAIRS = ((1, 8), (2, 16), (2, 32))
CONFIG = DualEncoderConfig(
    encoder=DecoderConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2, max_length=12,
                          init_std=0.2),
    pooling="mean", x_delimiter_ids=X_IDS, y_delimiter_ids=Y_IDS, matryoshka_layers=PAIRS)


def _batch(rng, size):
  out = {}
  for side, (open_id, close_id) in (("x", X_IDS), ("y", Y_IDS)):
    lengths = rng.integers(2, 12, size=size)
    tokens = rng.integers(1, 60, size=(size, 12)).astype(np.int32)
    tokens[:, 0] = open_id
    tokens[np.arange(size), lengths - 1] = close_id
    mask = (np.arange(12) < lengths[:, None]).astype(np.int32)
    out[f"{side}_tokens"], out[f"{side}_mask"] = tokens * mask, mask
  return out


def _numpy_info_nce(x, y, log_temp):
  logits = np.exp(log_temp) * x @ y.T
  def ce(l):
    l = l - l.max(1, keepdims=True)
    return np.mean(np.log(np.exp(l).sum(1)) - np.diag(l))
  return 0.5 * (ce(logits) + ce(logits.T))


def test_loss_over_pairs_equals_numpy_oracle_and_gradcache_equals_direct():
  mesh = partitioning.create_mesh(2, devices=jax.devices()[:2])
  module, params = init_dual_encoder(CONFIG, jax.random.key(0), mesh)
  batch = _batch(np.random.default_rng(0), 16)
  host_params = jax.device_get(params)
  log_temp = float(module.apply({"params": host_params}, method=DualEncoder.log_temperature))
  embed = jax.jit(lambda t, m, side, layers: module.apply(
      {"params": host_params}, t, m, side=side, num_layers=layers, method=DualEncoder.embed),
                  static_argnums=(2, 3))
  expected = []
  for layer, dim in PAIRS:
    sides = [np.asarray(embed(batch[f"{s}_tokens"], batch[f"{s}_mask"], s, layer),
                        np.float64)[:, :dim] for s in ("x", "y")]
    x, y = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in sides)
    expected.append(_numpy_info_nce(x, y, log_temp))

  tx, _ = optimizer.make_optimizer(10)
  place = {k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
  results = []
  for chunks in (1, 2):
    step = updater_lib.Updater(ContrastiveObjective(module, mesh, dropout=False), tx, None,
                               param_shardings(module, mesh), grad_cache_chunks=chunks)
    with partitioning.activate(mesh):
      results.append(jax.jit(step.grads)(params, place, jax.random.key(1)))
  (loss, metrics, grads), (cached_loss, _, cached_grads) = results
  np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)
  for (layer, dim), value in zip(PAIRS, expected):
    np.testing.assert_allclose(float(metrics[f"loss_layer{layer}_dim{dim}"]), value, rtol=1e-5)
  np.testing.assert_allclose(float(cached_loss), float(loss), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6 + 1e-5 * np.abs(b).max()),
               cached_grads, grads)
  assert np.abs(np.asarray(grads["encoder"]["layer_0"]["mlp"]["wo"]["kernel"])).max() > 0


def test_first_layers_equal_a_model_cut_to_those_layers():
  full = DualEncoder(dataclasses.replace(CONFIG, matryoshka_layers=None))
  params = init_params(full, jax.random.key(2, impl="rbg"))
  cut_config = dataclasses.replace(
      CONFIG, matryoshka_layers=None, encoder=dataclasses.replace(CONFIG.encoder, num_layers=1))
  cut_params = {**params, "encoder": {k: v for k, v in params["encoder"].items() if k != "layer_1"}}
  batch = _batch(np.random.default_rng(3), 4)
  ours = full.apply({"params": params}, batch["x_tokens"], batch["x_mask"], side="x",
                    num_layers=1, method=DualEncoder.embed)
  expected = DualEncoder(cut_config).apply({"params": cut_params}, batch["x_tokens"],
                                           batch["x_mask"], side="x", method=DualEncoder.embed)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=1e-6)
  with pytest.raises(ConfigError, match="--layers 3: the model has layers 1..2"):
    full.apply({"params": params}, batch["x_tokens"], batch["x_mask"], num_layers=3,
               method=DualEncoder.embed)


@pytest.mark.parametrize("pairs", [((3, 8),), ((1, 33),), ((0, 8),)])
def test_pairs_beyond_the_model_are_refused(pairs):
  with pytest.raises(ConfigError, match="matryoshka_layers: .* is beyond the model"):
    dataclasses.replace(CONFIG, matryoshka_layers=pairs)


def test_packed_layers_equal_padded_layers():
  from embed_jax.data import packing  # pylint: disable=import-outside-toplevel
  module = DualEncoder(CONFIG)
  params = init_params(module, jax.random.key(4, impl="rbg"))
  batch = _batch(np.random.default_rng(5), 8)
  tokens, mask = batch["y_tokens"], batch["y_mask"]
  packed = packing.pack_texts(tokens, mask, pooling="mean")
  padded = module.apply({"params": params}, tokens, mask, side="y", layers_out=(1, 2),
                        method=DualEncoder.embed_layers)
  together = module.apply({"params": params}, packed.tokens, packed.segment_ids,
                          packed.text_of_token, packed.pool_index, layers_out=(1, 2),
                          method=DualEncoder.embed_packed)
  assert together.shape == (2, 8, 32)
  np.testing.assert_allclose(np.asarray(together), np.asarray(padded), atol=2e-5)
