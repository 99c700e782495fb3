"""Linear probes (the SentEval protocol): logistic regression on frozen embeddings.

The regularisation strength C is chosen from `c_grid` on validation data that
the test data never touches: on a task's dev split where it has one (SST-2,
MRPC), else by inner k-fold cross-validation on the training data (TREC, and
inside each outer fold of the 10-fold tasks MR, CR, SUBJ, MPQA). The model is
then refitted on the training data with the chosen C and scored on the test
data. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import gin
import numpy as np

DEFAULT_C_GRID = tuple(2.0**t for t in range(-2, 4))  # SentEval's grid: 0.25 ... 8


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Sentence-pair features [u, v, |u - v|, u * v]: [N, 4d] from two [N, d] arrays."""
  return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def _classifier(c: float, max_iter: int):
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  return LogisticRegression(C=c, max_iter=max_iter)


def _fit_score(c, max_iter, x_train, y_train, x_test, y_test) -> float:
  return float(_classifier(c, max_iter).fit(x_train, y_train).score(x_test, y_test))


def choose_c_by_cv(features: np.ndarray, labels: np.ndarray, c_grid: Sequence[float],
                   folds: int, seed: int, max_iter: int) -> float:
  """The C of `c_grid` with the best mean accuracy over stratified `folds`-fold CV (first on ties)."""
  from sklearn.model_selection import StratifiedKFold  # pylint: disable=import-outside-toplevel
  splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels))
  means = [np.mean([_fit_score(c, max_iter, features[a], labels[a], features[b], labels[b])
                    for a, b in splits]) for c in c_grid]
  return float(c_grid[int(np.argmax(means))])


@gin.configurable(denylist=["features", "labels"])
def cross_validation_accuracy(features: np.ndarray, labels: Sequence[int], *, folds: int = 10,
                              inner_folds: int = 5, c_grid: Sequence[float] = DEFAULT_C_GRID,
                              seed: int = 1111, max_iter: int = 1000) -> dict:
  """Mean test accuracy over stratified `folds`-fold CV, C chosen by inner CV in each training part.

  Returns {"accuracy", "accuracy_std", "c_per_fold", "num_examples"}.
  """
  from sklearn.model_selection import StratifiedKFold  # pylint: disable=import-outside-toplevel
  features, labels = np.asarray(features), np.asarray(labels)
  accuracies, chosen = [], []
  for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
    c = choose_c_by_cv(features[train], labels[train], c_grid, inner_folds, seed, max_iter)
    accuracies.append(_fit_score(c, max_iter, features[train], labels[train], features[test],
                                 labels[test]))
    chosen.append(c)
  return {"accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
          "c_per_fold": chosen, "num_examples": int(len(labels))}


@gin.configurable(denylist=["train", "test", "dev"])
def split_accuracy(train: tuple[np.ndarray, Sequence[int]], test: tuple[np.ndarray, Sequence[int]],
                   dev: tuple[np.ndarray, Sequence[int]] | None = None, *, inner_folds: int = 5,
                   c_grid: Sequence[float] = DEFAULT_C_GRID, seed: int = 1111,
                   max_iter: int = 1000) -> dict:
  """Test accuracy with C chosen on `dev` (or by inner CV on `train` when there is no dev split).

  Each argument is (features [N, f], labels [N]). Returns {"accuracy", "c",
  "dev_accuracy" (when dev is given), "num_train", "num_test"}.
  """
  (x_train, y_train), (x_test, y_test) = [(np.asarray(x), np.asarray(y)) for x, y in (train, test)]
  result: dict = {}
  if dev is not None:
    x_dev, y_dev = np.asarray(dev[0]), np.asarray(dev[1])
    dev_scores = [_fit_score(c, max_iter, x_train, y_train, x_dev, y_dev) for c in c_grid]
    c = float(c_grid[int(np.argmax(dev_scores))])
    result["dev_accuracy"] = float(max(dev_scores))
  else:
    c = choose_c_by_cv(x_train, y_train, c_grid, inner_folds, seed, max_iter)
  result.update(accuracy=_fit_score(c, max_iter, x_train, y_train, x_test, y_test), c=c,
                num_train=int(len(y_train)), num_test=int(len(y_test)))
  return result
