"""Host-side packing: every token once, in its text's order, and the pooled token found."""

import numpy as np
import pytest

from embed_jax.data import packing

EOS = 9


def _batch(lengths, row_length):
  tokens = np.zeros((len(lengths), row_length), np.int32)
  mask = np.zeros_like(tokens)
  for i, n in enumerate(lengths):
    tokens[i, :n] = 100 * (i + 1) + np.arange(n)
    tokens[i, n - 1] = EOS
    mask[i, :n] = 1
  return tokens, mask


def test_every_text_lands_whole_in_one_segment():
  lengths = [5, 1, 8, 3, 3, 2, 7, 4]
  tokens, mask = _batch(lengths, 8)
  packed = packing.pack_texts(tokens, mask, pooling="eos", eos_id=EOS, pad_id=-1)
  assert packed.tokens.shape[1] == 8
  assert packed.tokens.shape[0] == 5  # 33 tokens in rows of 8: best fit needs 5 (one is 8 alone).
  for i, n in enumerate(lengths):
    where = packed.text_of_token == i
    assert where.sum() == n
    row = np.flatnonzero(where.any(axis=1))
    assert row.size == 1
    np.testing.assert_array_equal(packed.tokens[where], tokens[i, :n])
    assert len(set(packed.segment_ids[where].tolist())) == 1
    assert packed.tokens.reshape(-1)[packed.pool_index[i]] == EOS
  padding = packed.text_of_token == len(lengths)
  assert np.all(packed.segment_ids[padding] == 0) and np.all(packed.tokens[padding] == -1)
  assert (packed.segment_ids > 0).sum() == sum(lengths)


def test_pool_offsets_per_method():
  text = np.array([3, EOS, 7, EOS, 5])
  assert packing.pool_offset(text, "eos", EOS) == 3
  assert packing.pool_offset(np.array([3, 7]), "eos", EOS) == 1  # No delimiter: last token.
  assert packing.pool_offset(text, "last", None) == 4
  assert packing.pool_offset(text, "cls", None) == 0
  with pytest.raises(ValueError, match="needs the id of the closing delimiter"):
    packing.pool_offset(text, "eos", None)


def test_rows_are_bucketed_to_the_mesh_multiple():
  tokens, mask = _batch([8] * 9, 8)
  packed = packing.pack_texts(tokens, mask, pooling="last", rows_multiple=4)
  assert packed.tokens.shape[0] == 12  # 9 full rows -> bucket 12 (4, 8, 12 ...), a multiple of 4.
  assert [packing.bucket_rows(r, 8, 1000) for r in (1, 8, 9, 11, 30)] == [8, 8, 16, 16, 32]
  assert [packing.bucket_rows(r, 1, 1000) for r in (1, 2, 3, 5, 6)] == [1, 2, 3, 5, 6]
  assert packing.bucket_rows(40, 8, 20) == 24  # Never more rows than texts (rounded to 8).


def test_empty_or_left_padded_texts_are_named():
  tokens, mask = _batch([3, 2], 4)
  mask[1] = [0, 0, 1, 1]
  with pytest.raises(ValueError, match=r"texts \[1\] are empty or not right-padded"):
    packing.pack_texts(tokens, mask, pooling="mean")
  mask[1] = 0
  with pytest.raises(ValueError, match=r"texts \[1\]"):
    packing.pack_texts(tokens, mask, pooling="mean")
