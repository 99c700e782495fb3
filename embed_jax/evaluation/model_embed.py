"""Embedding with a loaded model directory the way every command does: its recorded length, optional `--dim`.

`embed`, `eval`, `search` and `mine` share these rules, so a model scores the
same wherever it is used:

- the token budget defaults to the length the model directory records (a
  sentence-transformers model's `max_seq_length`, kept by `convert` as
  metadata `max_length`), else the encoder's maximum;
- `dim=D` keeps the first D dimensions of each embedding and re-normalises them
  to unit length (Matryoshka truncation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from embed_jax.errors import UserError


class DimensionError(UserError):
  """A `--dim` that the model's embeddings cannot be truncated to."""


def max_length_for(model: Any, requested: int | None = None) -> int:
  """Tokens per text: `requested`, else the model's recorded `max_length`, else its encoder's maximum."""
  if requested is not None:
    if requested < 1:
      raise UserError(f"--max_length must be positive, got {requested}")
    return int(requested)
  recorded = (getattr(model, "metadata", None) or {}).get("max_length")
  return int(recorded or model.config.encoder.max_length)


def embedding_size(model: Any) -> int:
  """The width d of the model's embeddings: its projection's, else the encoder's d_model."""
  return int(model.config.output_dim)


def check_dim(dim: int | None, size: int) -> None:
  """Raises DimensionError unless `dim` is None or in 1..size."""
  if dim is not None and not 1 <= dim <= size:
    raise DimensionError(f"--dim {dim}: the model's embeddings have {size} dimensions; "
                         f"choose 1..{size}")


def truncate(vectors: np.ndarray, dim: int | None) -> np.ndarray:
  """The first `dim` columns of float [N, d] `vectors`, each row re-normalised to unit length.

  None returns `vectors` unchanged. Rows of zeros stay zeros.
  """
  if dim is None:
    return vectors
  vectors = np.asarray(vectors)
  check_dim(dim, vectors.shape[-1])
  head = vectors[:, :dim].astype(np.float64)
  norms = np.linalg.norm(head, axis=1, keepdims=True)
  return (head / np.maximum(norms, 1e-12)).astype(np.float32)


def embed(model: Any, texts: Sequence[str], side: str, *, mesh=None, batch_size: int = 128,
          max_length: int | None = None, dim: int | None = None,
          progress: bool | str = False) -> np.ndarray:
  """float32 [len(texts), dim or d]: `embedding.embed_with_model` at `max_length_for`, then `truncate`."""
  from embed_jax import embedding  # pylint: disable=import-outside-toplevel
  check_dim(dim, embedding_size(model))  # Before the work, not after it.
  vectors = embedding.embed_with_model(model, list(texts), side=side, mesh=mesh,
                                       batch_size=batch_size,
                                       max_length=max_length_for(model, max_length),
                                       progress=progress)
  return truncate(vectors, dim)
