"""Shared test data and tolerances for the contrastive-loss tests."""

from __future__ import annotations

import numpy as np
import pytest


def _unit(a: np.ndarray) -> np.ndarray:
  return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture(scope="session")
def make_pairs():
  """Factory: float32 unit embeddings x, y [B, d], hard [B, H, d] (or None), ids [B] (or None).

  `pairing` > 0 makes y_i close to x_i (strongly paired, small loss). With
  `duplicates`, ids repeat (within and across shards) and duplicate y texts get
  identical embeddings, as duplicated texts would.
  """
  def make(batch: int, dim: int = 8, hard: int = 0, duplicates: bool = False,
           pairing: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = _unit(rng.normal(size=(batch, dim)))
    y = _unit(rng.normal(size=(batch, dim)) + pairing * x)
    ids = None
    if duplicates:
      ids = rng.integers(0, max(batch * 2 // 3, 1), size=batch).astype(np.int32)
      first = {}
      for i, text_id in enumerate(ids):
        y[i] = y[first.setdefault(text_id, i)]
    negatives = _unit(rng.normal(size=(batch, hard, dim))) if hard else None
    cast = lambda a: None if a is None else a.astype(np.float32)
    return cast(x), cast(y), cast(negatives), ids

  return make


@pytest.fixture(scope="session")
def assert_close():
  """Asserts arrays agree within `rtol` relative to the expected array's largest entry."""
  def check(actual, expected, rtol: float = 1e-5, name: str = ""):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, name
    assert np.all(np.isfinite(actual)), f"{name}: non-finite values"
    scale = max(np.max(np.abs(expected), initial=0.0), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=name)

  return check
