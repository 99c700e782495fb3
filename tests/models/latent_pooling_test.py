"""Latent-attention pooling (NV-Embed): a numpy oracle, packed == padded, sharded == unsharded."""

import math

import jax
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.data import packing
from embed_jax.errors import ConfigError
from embed_jax.models import Decoder, DecoderConfig, DualEncoder, DualEncoderConfig, init_params

Y_IDS = (5, 6)
ENCODER = DecoderConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, max_length=16,
                        position_embedding="rope", norm="rmsnorm", mlp_activation="silu",
                        gated_mlp=True, qkv_bias=False, out_bias=False, mlp_bias=False,
                        causal=False)
CONFIG = DualEncoderConfig(encoder=ENCODER, pooling="latent_attention", x_delimiter_ids=(3, 4),
                           y_delimiter_ids=Y_IDS, projection_dim=16,
                           latent_attention_latents=12, latent_attention_heads=4)
MODEL = DualEncoder(CONFIG)


@pytest.fixture(scope="module")
def params():
  return init_params(MODEL, jax.random.key(0, impl="rbg"))


def _texts(count, length, seed=0):
  rng = np.random.default_rng(seed)
  tokens = np.zeros((count, length), np.int32)
  mask = np.zeros((count, length), np.int32)
  for i in range(count):
    n = int(rng.integers(0, length - 2))
    row = [Y_IDS[0], *rng.integers(10, 64, size=n), Y_IDS[1]]
    tokens[i, :len(row)], mask[i, :len(row)] = row, 1
  return tokens, mask


def _gelu(x):
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def numpy_latent_embed(params, hidden, mask, prompt_length):
  """The model's embeddings of hidden [B, L, D], written out in float64 numpy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  lat = p["latent_pool"]
  h = np.asarray(hidden, np.float64)
  heads = CONFIG.latent_attention_heads
  head_dim = h.shape[-1] // heads
  q = np.einsum("bld,dnh->blnh", h, lat["query"]["kernel"])
  k = np.einsum("rd,dnh->rnh", lat["latents"], lat["key"]["kernel"])
  v = np.einsum("rd,dnh->rnh", lat["latents"], lat["value"]["kernel"])
  logits = np.einsum("blnh,rnh->blnr", q, k) / math.sqrt(head_dim)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  a = h + np.einsum("blnh,nhd->bld", np.einsum("blnr,rnh->blnh", probs, v), lat["out"]["kernel"])
  mlp = lat["mlp"]
  o = a + _gelu(a @ mlp["wi"]["kernel"] + mlp["wi"]["bias"]) @ mlp["wo"]["kernel"] + mlp["wo"]["bias"]
  out = []
  for b in range(h.shape[0]):
    real = np.flatnonzero(mask[b])[prompt_length[b]:]  # The text's tokens after its prompt.
    pooled = o[b, real].mean(0) @ p["projection"]["kernel"]
    out.append(pooled / np.linalg.norm(pooled))
  return np.stack(out)


def test_equals_numpy_oracle_and_leaves_the_prompt_out(params):
  tokens, mask = _texts(5, 16)
  prompt_length = np.array([0, 1, 2, 1, 0], np.int32)
  hidden = Decoder(ENCODER).apply({"params": params["encoder"]}, tokens, mask)
  expected = numpy_latent_embed(params, hidden, mask, prompt_length)
  got = MODEL.apply({"params": params}, tokens, mask, side="y", prompt_length=prompt_length,
                    method=DualEncoder.embed)
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)
  plain = MODEL.apply({"params": params}, tokens, mask, side="y", method=DualEncoder.embed)
  np.testing.assert_allclose(np.asarray(plain)[[0, 4]], expected[[0, 4]], atol=2e-5)
  assert np.abs(np.asarray(plain[1]) - expected[1]).max() > 1e-3  # The prompt did matter.


def test_packed_equals_padded_with_prompts(params):
  tokens, mask = _texts(12, 16, seed=1)
  prompt_length = np.arange(12, dtype=np.int32) % 3
  packed = packing.pack_texts(tokens, mask, pooling="latent_attention", rows_multiple=2)
  assert packed.tokens.shape[0] < 12
  padded = MODEL.apply({"params": params}, tokens, mask, side="y", prompt_length=prompt_length,
                       method=DualEncoder.embed)
  together = MODEL.apply({"params": params}, packed.tokens, packed.segment_ids,
                         packed.text_of_token, packed.pool_index, prompt_length=prompt_length,
                         method=DualEncoder.embed_packed)
  np.testing.assert_allclose(np.asarray(together), np.asarray(padded), atol=2e-5)


def test_sharded_equals_unsharded(params):
  mesh = partitioning.create_mesh(data=4, fsdp=1, tensor=2)
  sharded = init_params(MODEL, jax.random.key(0, impl="rbg"), mesh)
  assert sharded["latent_pool"]["query"]["kernel"].sharding.spec[1] == "tensor"
  tokens, mask = _texts(8, 16, seed=2)
  expected = MODEL.apply({"params": jax.device_get(sharded)}, tokens, mask, side="y",
                         method=DualEncoder.embed)
  batch = partitioning.batch_sharding(mesh, 2)
  with partitioning.activate(mesh):
    got = jax.jit(lambda p, t, m: MODEL.apply({"params": p}, t, m, side="y",
                                              method=DualEncoder.embed))(
        sharded, jax.device_put(tokens, batch), jax.device_put(mask, batch))
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-5)


@pytest.mark.parametrize("changes, message", [
    (dict(latent_attention_heads=5), "latent_attention_heads=5 does not divide"),
    (dict(latent_attention_latents=0), "latent_attention_latents must be >= 1")])
def test_bad_settings_are_one_line_errors(changes, message):
  with pytest.raises(ConfigError, match=message):
    DualEncoderConfig(encoder=ENCODER, pooling="latent_attention", **changes)


def test_bfloat16_compute_has_gradients_close_to_float32(params):
  """bfloat16 products (XLA:CPU lacks some of them) run forward and backward, near float32."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  low = DualEncoder(dataclasses.replace(
      CONFIG, encoder=dataclasses.replace(ENCODER, dtype="bfloat16")))
  tokens, mask = _texts(4, 16, seed=3)

  def embed_sum(module):
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(module.apply(
        {"params": p}, tokens, mask, side="y", method=DualEncoder.embed)[:, 0])))
  (value, grads), (low_value, low_grads) = embed_sum(MODEL)(params), embed_sum(low)(params)
  np.testing.assert_allclose(float(low_value), float(value), rtol=0.05, atol=0.05)
  g, lg = (np.asarray(t["latent_pool"]["latents"]) for t in (grads, low_grads))
  assert np.all(np.isfinite(lg)) and np.sum(g * lg) / np.linalg.norm(g) / np.linalg.norm(lg) > 0.95
