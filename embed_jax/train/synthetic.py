"""Synthetic pairs: a TF-free batch source for smoke runs, throughput and tests.

Pair i of batch s is drawn from a generator seeded by (seed, s), so every
process builds the same global batch and feeds its own rows; the position is
a step count (get_state/set_state as the real pipeline). y is x's body
reversed, so there is something to learn.
"""

from __future__ import annotations

from collections.abc import Mapping

import gin
import numpy as np

from embed_jax import partitioning, tokenization

_STATE_FORMAT = "embed_jax.train.synthetic/1"


@gin.configurable
class SyntheticPairs:
  """This process's rows of synthetic global batches in the batch format.

  Args:
    text_encoder: supplies the delimiter ids and the id range.
    batch_size: the global batch size.
    x_length, y_length: token lengths of each side (delimiters included).
    num_negatives: hard negatives per example (other examples' y).
    seed: fixes every batch.
  """

  def __init__(self, text_encoder: tokenization.TextEncoder, batch_size: int = 32,
               x_length: int = 32, y_length: int = 32, num_negatives: int = 0, seed: int = 0):
    self.encoder = text_encoder
    self.global_batch_size = batch_size
    self.local_rows = partitioning.host_local_batch_slice(batch_size)
    self.x_length, self.y_length = x_length, y_length
    self.num_negatives, self.seed = num_negatives, seed
    self.index = 0
    self.body_ids = min(text_encoder.tokenizer.vocab_size, 1000)

  def _side(self, bodies: list[np.ndarray], side: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    template = self.encoder.template(side)
    tokens = np.full((len(bodies), length), self.encoder.pad_id, np.int32)
    mask = np.zeros((len(bodies), length), np.int32)
    room = length - len(template.prefix_ids) - len(template.suffix_ids)
    for i, body in enumerate(bodies):
      ids = list(template.prefix_ids) + list(body[:room]) + list(template.suffix_ids)
      tokens[i, :len(ids)] = ids
      mask[i, :len(ids)] = 1
    return tokens, mask

  def __iter__(self) -> SyntheticPairs:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.index])
    self.index += 1
    n = self.global_batch_size
    lengths = rng.integers(2, max(3, min(self.x_length, self.y_length) - 2), size=n)
    bodies = [rng.integers(0, self.body_ids, size=k) for k in lengths]
    x_tokens, x_mask = self._side(bodies, "x", self.x_length)
    y_tokens, y_mask = self._side([b[::-1] for b in bodies], "y", self.y_length)
    batch = {"x_tokens": x_tokens, "x_mask": x_mask, "y_tokens": y_tokens, "y_mask": y_mask,
             "y_ids": np.arange(n, dtype=np.int32) + n * self.index}
    if self.num_negatives:
      others = [(i + 1 + h) % n for i in range(n) for h in range(self.num_negatives)]
      neg_tokens, neg_mask = self._side([bodies[j][::-1] for j in others], "y", self.y_length)
      batch["neg_tokens"] = neg_tokens.reshape(n, self.num_negatives, self.y_length)
      batch["neg_mask"] = neg_mask.reshape(n, self.num_negatives, self.y_length)
    return {k: v[self.local_rows] for k, v in batch.items()}

  def get_state(self) -> dict:
    return {"format": _STATE_FORMAT, "index": self.index, "seed": self.seed}

  def set_state(self, state: Mapping) -> None:
    if state.get("format") != _STATE_FORMAT:
      raise ValueError(f"not a SyntheticPairs state: {state.get('format')!r}")
    self.index = int(state["index"])

