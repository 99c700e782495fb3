"""embed_texts: input order kept, sorting/bucketing/sharding change nothing, empty texts embed."""

import jax
import numpy as np
import pytest

from embed_jax import embedding, partitioning
from embed_jax.models import DecoderConfig, DualEncoder, DualEncoderConfig, init_dual_encoder
from embed_jax.tokenization import text_encoder

TEXTS = ["a short one", "", "def f(x):\n    return x * 2  # } ]",
         "a much longer text " * 6, "tiny", "Return the sum.", "   ", "z"]


@pytest.fixture(scope="module")
def model(minilm_tokenizer_json):
  encoder = text_encoder(tokenizer_json=minilm_tokenizer_json)
  config = DualEncoderConfig(
      encoder=DecoderConfig(vocab_size=encoder.vocab_size, d_model=16, num_layers=1, num_heads=2,
                            max_length=64, position_embedding="rope", norm="rmsnorm"),
      x_delimiter_ids=encoder.delimiter_ids("x"), y_delimiter_ids=encoder.delimiter_ids("y"))
  module, params = init_dual_encoder(config, jax.random.key(1))
  return module, params, encoder


def _one_by_one(module, params, encoder, texts, side, max_length=64):
  rows = []
  for text in texts:
    enc = encoder.encode([text], side, max_length)
    length = int(enc.mask.sum())
    rows.append(np.asarray(module.apply(
        {"params": params}, enc.tokens[:, :length], enc.mask[:, :length], side=side,
        method=DualEncoder.embed))[0])
  return np.stack(rows)


@pytest.mark.parametrize("side", ["x", "y"])
def test_matches_embedding_each_text_alone(model, side):
  module, params, encoder = model
  got = embedding.embed_texts(module, params, encoder, TEXTS, side=side, batch_size=3)
  np.testing.assert_allclose(got, _one_by_one(module, params, encoder, TEXTS, side), atol=1e-5)
  assert got.dtype == np.float32 and got.shape == (len(TEXTS), 16)


def test_sharded_over_a_mesh_equals_one_device(model):
  module, params, encoder = model
  mesh = partitioning.create_mesh()
  replicated = jax.device_put(params, partitioning.replicated(mesh))
  got = embedding.embed_texts(module, replicated, encoder, TEXTS * 3, batch_size=5, mesh=mesh,
                              progress=True)
  want = embedding.embed_texts(module, params, encoder, TEXTS * 3, batch_size=7)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_truncation_keeps_the_closing_delimiter(model):
  module, params, encoder = model
  got = embedding.embed_texts(module, params, encoder, [TEXTS[3]], max_length=8)
  np.testing.assert_allclose(
      got, _one_by_one(module, params, encoder, [TEXTS[3]], "x", max_length=8), atol=1e-5)


def test_no_texts_and_bad_texts(model):
  module, params, encoder = model
  assert embedding.embed_texts(module, params, encoder, []).shape == (0, 16)
  with pytest.raises(TypeError, match="text 1 is NoneType"):
    embedding.embed_texts(module, params, encoder, ["ok", None])


def test_bucket_lengths_bound_padding():
  lengths = {embedding.bucket_length(n, 512) for n in range(1, 513)}
  assert len(lengths) < 20
  for n in range(1, 513):
    bucket = embedding.bucket_length(n, 512)
    assert n <= bucket <= max(16, int(n * 1.3) + 8)
