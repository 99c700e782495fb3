"""Packed texts embed exactly as the same texts one per row (the packing oracle)."""

import jax
import numpy as np
import pytest

from embed_jax.data import packing
from embed_jax.models import (
    BertConfig, DecoderConfig, DualEncoder, DualEncoderConfig, init_params)

X_IDS, Y_IDS = (3, 4), (5, 6)
LLAMA = DecoderConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_length=24, position_embedding="rope", norm="rmsnorm",
                      mlp_activation="silu", gated_mlp=True)
BERT = BertConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_length=24,
                  dropout_rate=0.0, attention_dropout_rate=0.0)


def _texts(rng, count, row_length, side_ids):
  """Right-padded [count, row_length] texts of random lengths, wrapped in a side's delimiters."""
  tokens = np.zeros((count, row_length), np.int32)
  mask = np.zeros((count, row_length), np.int32)
  for i in range(count):
    n = int(rng.integers(0, row_length - 1))
    body = rng.integers(10, 64, size=n)
    if n and i % 3 == 0:
      body[n // 2] = side_ids[1]  # The closing delimiter inside the text, too.
    row = [side_ids[0], *body, side_ids[1]]
    tokens[i, :len(row)] = row
    mask[i, :len(row)] = 1
  return tokens, mask


@pytest.mark.parametrize("encoder, pooling, projection", [
    (LLAMA, "eos", 16), (BERT, "mean", None), (LLAMA, "last", None), (BERT, "cls", None)])
def test_packed_equals_unpacked(encoder, pooling, projection):
  config = DualEncoderConfig(encoder=encoder, pooling=pooling, x_delimiter_ids=X_IDS,
                             y_delimiter_ids=Y_IDS, projection_dim=projection)
  module = DualEncoder(config)
  params = init_params(module, jax.random.key(0, impl="rbg"))
  tokens, mask = _texts(np.random.default_rng(0), 13, 24, Y_IDS)
  packed = packing.pack_texts(tokens, mask, pooling=pooling, eos_id=Y_IDS[1], rows_multiple=2)
  assert packed.tokens.shape[0] < 13  # Texts actually shared rows.

  unpacked = module.apply({"params": params}, tokens, mask, side="y", method=DualEncoder.embed)
  together = module.apply({"params": params}, packed.tokens, packed.segment_ids,
                          packed.text_of_token, packed.pool_index, method=DualEncoder.embed_packed)
  np.testing.assert_allclose(np.asarray(together), np.asarray(unpacked), atol=2e-5)
