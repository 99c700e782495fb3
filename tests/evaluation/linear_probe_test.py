"""Linear probe: C is chosen on validation data only, and the test score uses that C."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from embed_jax.evaluation import linear_probe


@pytest.fixture(scope="module")
def noisy_data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(240, 6))
  y = (x[:, 0] + 0.8 * rng.normal(size=240) > 0).astype(int)
  return x, y


def test_split_accuracy_picks_c_on_dev(noisy_data):
  x, y = noisy_data
  train, dev, test = (x[:120], y[:120]), (x[120:180], y[120:180]), (x[180:], y[180:])
  grid = (0.001, 0.1, 10.0)
  result = linear_probe.split_accuracy(train, test, dev, c_grid=grid)
  dev_scores = [LogisticRegression(C=c, max_iter=1000).fit(*train).score(*dev) for c in grid]
  best = grid[int(np.argmax(dev_scores))]
  assert result["c"] == best and result["dev_accuracy"] == max(dev_scores)
  assert result["accuracy"] == LogisticRegression(C=best, max_iter=1000).fit(*train).score(*test)


def test_cross_validation_chooses_c_inside_each_training_part(noisy_data):
  x, y = noisy_data
  result = linear_probe.cross_validation_accuracy(x, y, folds=4, inner_folds=3, c_grid=(0.01, 1.0))
  assert len(result["c_per_fold"]) == 4 and set(result["c_per_fold"]) <= {0.01, 1.0}
  assert 0.6 < result["accuracy"] <= 1.0 and result["num_examples"] == 240


def test_pair_features():
  u, v = np.array([[1.0, -2.0]]), np.array([[3.0, 1.0]])
  np.testing.assert_array_equal(linear_probe.pair_features(u, v), [[1, -2, 3, 1, 2, 3, 3, -2]])
