"""Pooling picks the right position under left and right padding."""

import numpy as np
import pytest

from embed_jax.models import pooling

EOS = 9
# Row 0: right padding, the delimiter also inside the text; padding uses EOS as its id (GPT-2 does).
# Row 1: left padding, the delimiter inside the text and at the end.
# Row 2: no delimiter at all (falls back to the last real token).
TOKENS = np.array([[5, EOS, 7, EOS, 3, EOS, EOS],
                   [0, 0, 4, EOS, 6, 8, EOS],
                   [1, 2, 3, 4, 0, 0, 0]], np.int32)
MASK = np.array([[1, 1, 1, 1, 1, 0, 0],
                 [0, 0, 1, 1, 1, 1, 1],
                 [1, 1, 1, 1, 0, 0, 0]], np.int32)
B, L, D = 3, 7, 4
# hidden[b, l] = 100 b + l in every feature, so the chosen position can be read off.
HIDDEN = (100 * np.arange(B)[:, None, None] + np.arange(L)[None, :, None]
          + np.zeros((1, 1, D))).astype(np.float32)


def _positions(pooled):
  pooled = np.asarray(pooled)
  assert np.all(pooled == pooled[:, :1])
  return (pooled[:, 0] - 100 * np.arange(B)).astype(int).tolist()


def test_eos_is_the_last_real_occurrence_of_the_delimiter():
  assert _positions(pooling.pool(HIDDEN, TOKENS, MASK, "eos", eos_id=EOS)) == [3, 6, 3]


def test_last_cls_and_mean():
  assert _positions(pooling.pool(HIDDEN, TOKENS, MASK, "last")) == [4, 6, 3]
  assert _positions(pooling.pool(HIDDEN, TOKENS, MASK, "cls")) == [0, 2, 0]
  mean = np.asarray(pooling.pool(HIDDEN, TOKENS, MASK, "mean"))
  expected = [(HIDDEN[b] * MASK[b][:, None]).sum(0) / MASK[b].sum() for b in range(B)]
  np.testing.assert_allclose(mean, np.stack(expected), rtol=1e-6)


def test_host_check_names_rows_without_the_delimiter():
  pooling.check_token_present(TOKENS[:2], MASK[:2], EOS, "closing delimiter of x")
  with pytest.raises(ValueError, match=r"closing delimiter of x \(token id 9\) is missing from 1 of 3 rows: rows 2"):
    pooling.check_token_present(TOKENS, MASK, EOS, "closing delimiter of x")


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="needs the id of the closing delimiter"):
    pooling.pool(HIDDEN, TOKENS, MASK, "eos")
  with pytest.raises(ValueError, match="unknown pooling 'max'"):
    pooling.pool(HIDDEN, TOKENS, MASK, "max")
