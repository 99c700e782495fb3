"""Decoder and BERT encoder: packing, sharding, rematerialisation, dtypes, dropout, validation."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.models import BertConfig, BertEncoder, Decoder, DecoderConfig, init_params, stack
from embed_jax.models.sharded_init import abstract_params, example_inputs

GPT2_STYLE = DecoderConfig(vocab_size=96, d_model=32, num_layers=2, num_heads=4, max_length=16)
LLAMA_STYLE = DecoderConfig(
    vocab_size=96, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=48, max_length=16,
    position_embedding="rope", norm="rmsnorm", mlp_activation="silu", gated_mlp=True,
    qkv_bias=False, out_bias=False, mlp_bias=False)
BERT = BertConfig(vocab_size=96, d_model=32, num_layers=2, num_heads=4, d_ff=48, max_length=16)
TOKENS = np.random.RandomState(0).randint(1, 96, size=(4, 12)).astype(np.int32)
# Jitted once and shared by the tests (compilation dominates their time).
GPT2_APPLY = jax.jit(Decoder(GPT2_STYLE).apply)


def _rbg_key(seed):
  """A key whose generator XLA on CPU compiles fast (threefry is slow to compile there)."""
  return jax.random.key(seed, impl="rbg")


def _random_params(module, seed):
  """Random params of the module's shapes, drawn in numpy (no init compilation).

  Norm scales are 1 + noise, everything else N(0, 0.2), so every param matters.
  """
  abstract = nn.meta.unbox(abstract_params(module, example_inputs(module, 1)))
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: ((path[-1].key == "scale") + 0.2 * rng.normal(size=x.shape)).astype(x.dtype),
      abstract)


@pytest.fixture(scope="module")
def params():
  """Params of each config above, by config name."""
  return {
      "gpt2": _random_params(Decoder(GPT2_STYLE), 0),
      "llama": _random_params(Decoder(LLAMA_STYLE), 1),
      "bert": _random_params(BertEncoder(BERT), 2),
  }


@pytest.mark.parametrize("name,module", [("gpt2", Decoder(GPT2_STYLE)), ("bert", BertEncoder(BERT))])
def test_packed_texts_equal_texts_encoded_alone(name, module, params):
  """Two texts packed in one row (segment ids, default per-segment positions) = each alone."""
  params = params[name]
  a, b, c = TOKENS[0, :5], TOKENS[1, :4], TOKENS[2, :7]
  packed = np.zeros((2, 12), np.int32)
  segments = np.zeros((2, 12), np.int32)
  packed[0, :9], segments[0, :9] = np.concatenate([a, b]), [1] * 5 + [2] * 4
  packed[1, :7], segments[1, :7] = c, 1
  alone = np.zeros((2, 12), np.int32)
  alone[0, :5], alone[1, :4] = a, b
  alone_mask = (np.arange(12) < np.array([[5], [4]])).astype(np.int32)

  apply = GPT2_APPLY if name == "gpt2" else jax.jit(module.apply)
  packed_out = apply({"params": params}, packed, segments > 0, segment_ids=segments)
  alone_out = apply({"params": params}, alone, alone_mask)
  np.testing.assert_allclose(packed_out[0, :5], alone_out[0, :5], atol=1e-5)
  np.testing.assert_allclose(packed_out[0, 5:9], alone_out[1, :4], atol=1e-5)


def test_sharded_forward_equals_unsharded():
  """FSDP + tensor sharding on a (2, 2, 2) mesh changes nothing but where arrays live."""
  module = Decoder(LLAMA_STYLE)
  mask = (np.arange(12) < np.array([[12], [9], [5], [1]])).astype(np.int32)
  mesh = partitioning.create_mesh(data=2, fsdp=2, tensor=2)
  sharded = init_params(module, jax.random.key(3), mesh)
  query = sharded["layer_0"]["attention"]["query"]["kernel"]
  assert query.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert sharded["layer_1"]["mlp"]["wo"]["kernel"].sharding.spec == (
      jax.sharding.PartitionSpec("tensor", "fsdp"))
  assert len(query.addressable_shards) == 8 and query.addressable_shards[0].data.shape == (16, 2, 8)
  expected = jax.jit(module.apply)({"params": jax.device_get(sharded)}, TOKENS, mask)

  batch = partitioning.batch_sharding(mesh, 2)
  with partitioning.activate(mesh):
    out = jax.jit(module.apply)(
        {"params": sharded}, jax.device_put(TOKENS, batch), jax.device_put(mask, batch))
  assert out.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_remat_keeps_outputs_and_gradients(params):
  plain, remat = Decoder(LLAMA_STYLE), Decoder(dataclasses.replace(LLAMA_STYLE, remat_policy="full"))
  params = params["llama"]
  mask = np.ones_like(TOKENS)

  def loss_fn(module):
    return jax.value_and_grad(lambda p: jnp.sum(module.apply({"params": p}, TOKENS, mask) ** 2))

  assert "remat" in str(jax.make_jaxpr(loss_fn(remat))(params))  # jax.checkpoint's primitive
  assert "remat" not in str(jax.make_jaxpr(loss_fn(plain))(params))
  (value, grads) = jax.jit(loss_fn(plain))(params)
  (remat_value, remat_grads) = jax.jit(loss_fn(remat))(params)
  np.testing.assert_allclose(remat_value, value, rtol=1e-6)
  jax.tree.map(  # float32 reassociation differences, relative to each gradient's scale
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max()), remat_grads, grads)


def test_scanned_layers_equal_unrolled_layers(params):
  """nn.scan over stacked params (with remat inside) computes what the unrolled stack does."""
  scanned = Decoder(dataclasses.replace(LLAMA_STYLE, scan_layers=True, remat_policy="dots"))
  mask = (np.arange(12) < np.array([[12], [9], [5], [1]])).astype(np.int32)
  stacked = stack.stack_layer_params(params["llama"], LLAMA_STYLE.num_layers)
  abstract = jax.eval_shape(lambda: scanned.init(jax.random.key(0), TOKENS, mask))["params"]
  assert jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract)) == jax.tree.map(
      lambda x: x.shape, stacked)
  assert nn.get_partition_spec(abstract)["layers"]["attention"]["query"]["kernel"] == (
      jax.sharding.PartitionSpec("layers", "embed", "heads", "head_dim"))
  np.testing.assert_allclose(
      jax.jit(scanned.apply)({"params": stacked}, TOKENS, mask),
      jax.jit(Decoder(LLAMA_STYLE).apply)({"params": params["llama"]}, TOKENS, mask), atol=1e-5)
  unstacked = stack.unstack_layer_params(stacked, LLAMA_STYLE.num_layers)
  jax.tree.map(np.testing.assert_array_equal, unstacked, params["llama"])


def test_bfloat16_compute_with_float32_params(params):
  module = Decoder(dataclasses.replace(GPT2_STYLE, dtype="bfloat16"))
  params = params["gpt2"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  mask = np.ones_like(TOKENS)
  out = jax.jit(module.apply)({"params": params}, TOKENS, mask)
  reference = GPT2_APPLY({"params": params}, TOKENS, mask)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), reference, atol=0.1)


def test_dropout_only_when_not_deterministic(params):
  module = Decoder(dataclasses.replace(GPT2_STYLE, dropout_rate=0.2, attention_dropout_rate=0.2))
  params = params["gpt2"]
  mask = np.ones_like(TOKENS)

  @jax.jit
  def train_forward(seed):
    return module.apply({"params": params}, TOKENS, mask, deterministic=False,
                        rngs={"dropout": _rbg_key(seed)})
  evaluation = GPT2_APPLY({"params": params}, TOKENS, mask)  # no dropout configured
  assert np.abs(np.asarray(train_forward(0)) - np.asarray(evaluation)).max() > 1e-2
  assert np.abs(np.asarray(train_forward(0)) - np.asarray(train_forward(1))).max() > 1e-2


def test_input_longer_than_learned_positions_is_rejected():
  module = Decoder(GPT2_STYLE)
  tokens = np.zeros((1, 17), np.int32)
  with pytest.raises(ValueError, match="input length 17 exceeds the 16 learned positions"):
    jax.eval_shape(lambda: module.init(jax.random.key(0), tokens, tokens))


@pytest.mark.parametrize("fields,message", [
    (dict(num_heads=5), "d_model=32 is not divisible by num_heads=5"),
    (dict(num_kv_heads=3), "num_heads=4 is not a multiple of num_kv_heads=3"),
    (dict(norm="batchnorm"), "unknown norm 'batchnorm'"),
    (dict(remat_policy="some"), "unknown remat_policy 'some'"),
    (dict(position_embedding="alibi"), "unknown position_embedding 'alibi'"),
])
def test_invalid_decoder_configs_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(GPT2_STYLE, **fields)
