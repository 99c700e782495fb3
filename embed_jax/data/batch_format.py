"""The batch contract between the data pipeline and the train step (no tensorflow).

All int32, right-padded, delimiters included in the tokens:
  x_tokens, x_mask      [B, Lx]     mask 1 = real token, 0 = padding
  y_tokens, y_mask      [B, Ly]
  neg_tokens, neg_mask  [B, H, Ly]  only with hard negatives; a missing negative is all padding
  y_ids                 [B]         hash of each y token sequence, equal for equal y texts
"""

from __future__ import annotations

import hashlib

import numpy as np

PAIR_FEATURES = ("x_tokens", "x_mask", "y_tokens", "y_mask", "y_ids")
NEGATIVE_FEATURES = ("neg_tokens", "neg_mask")


def sequence_hash(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """A stable 32-bit hash of each row's real tokens: int32 [N] from tokens, mask [N, L].

  Equal sequences hash equal on every machine (blake2b of the little-endian
  ids), so the loss can mask in-batch duplicates of a positive. Different
  sequences collide with probability 2**-32 per pair.
  """
  lengths = np.asarray(mask).sum(axis=1)
  rows = np.asarray(tokens).astype("<i4")
  out = np.empty(len(rows), np.uint32)
  for i, (row, n) in enumerate(zip(rows, lengths)):
    out[i] = int.from_bytes(hashlib.blake2b(row[:n].tobytes(), digest_size=4).digest(), "little")
  return out.view(np.int32)
