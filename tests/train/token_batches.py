"""Random token batches for the step and objective tests: texts wrapped in side delimiters."""

import numpy as np

VOCAB = 64
OPEN_X, CLOSE_X, OPEN_Y, CLOSE_Y = 60, 61, 62, 63


def delimited_texts(rng, open_id, close_id, shape, length):
  """(tokens, mask) int32 [*shape, length]: random texts of 3..length tokens, right-padded,
  each opening with `open_id` and closing with `close_id`."""
  tokens = rng.integers(0, 60, size=shape + (length,)).astype(np.int32)
  lengths = rng.integers(3, length + 1, size=shape)
  mask = (np.arange(length) < lengths[..., None]).astype(np.int32)
  tokens[..., 0] = open_id
  np.put_along_axis(tokens, (lengths - 1)[..., None], close_id, axis=-1)
  return tokens * mask, mask
