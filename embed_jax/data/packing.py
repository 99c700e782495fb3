"""Packing several short texts into one row, so padding does not eat the compute (no tensorflow).

A batch of N right-padded texts [N, L] becomes R <= N rows of the same length
L, each holding whole texts back to back (best-fit decreasing bin packing).
Each text is a segment: attention stays inside it and positions restart at 0
(the encoders' `segment_ids`), and pooling picks one vector per text, so the
model computes exactly what it computes on the unpacked batch while the
feed-forward work shrinks by the padding fraction.

Packed layout (all int32):
  tokens         [R, L]   texts back to back, then padding
  segment_ids    [R, L]   1..S within each row, 0 = padding
  text_of_token  [R, L]   index 0..N-1 of the text a token belongs to; N for padding
  pool_index     [N]      flat index (row * L + column) of each text's pooled token
R is rounded up to a bucket (multiples of `rows_multiple`, growing ~1.25x) so
that few shapes compile.
"""

from __future__ import annotations

import bisect
import dataclasses

import numpy as np

POOL_POSITIONS = ("eos", "last", "cls", "mean", "latent_attention")


@dataclasses.dataclass(frozen=True)
class PackedTexts:
  """N texts packed into rows; see the module docstring for the fields' shapes."""
  tokens: np.ndarray
  segment_ids: np.ndarray
  text_of_token: np.ndarray
  pool_index: np.ndarray

  @property
  def num_texts(self) -> int:
    return len(self.pool_index)

  def as_dict(self, prefix: str) -> dict[str, np.ndarray]:
    """The fields keyed `{prefix}_tokens`, ..., as the train step takes them."""
    return {f"{prefix}_{field.name}": getattr(self, field.name) for field in dataclasses.fields(self)}


def bucket_rows(rows: int, multiple: int, limit: int) -> int:
  """`rows` rounded up to a bucket: multiples of `multiple`, growing ~1.25x, at most `limit`."""
  multiple = max(multiple, 1)
  bucket = multiple
  while bucket < rows:
    bucket = max(bucket + multiple, -(-int(bucket * 1.25) // multiple) * multiple)
  limit = -(-limit // multiple) * multiple
  return min(bucket, limit)


def _assign_rows(lengths: np.ndarray, row_length: int) -> list[list[int]]:
  """Best-fit decreasing: texts (by index) per row, each row's total <= row_length."""
  rows: list[list[int]] = []
  free: list[tuple[int, int]] = []  # (free space, row index), sorted.
  for i in np.argsort(-lengths, kind="stable"):
    need = int(lengths[i])
    where = bisect.bisect_left(free, (need, -1))
    if where == len(free):
      rows.append([int(i)])
      bisect.insort(free, (row_length - need, len(rows) - 1))
    else:
      space, row = free.pop(where)
      rows[row].append(int(i))
      bisect.insort(free, (space - need, row))
  for row in rows:  # Texts in input order within a row: packing is then a stable layout.
    row.sort()
  return rows


def pool_offset(text: np.ndarray, pooling: str, eos_id: int | None) -> int:
  """Offset inside one text's real tokens [n] of the token its pooling reads."""
  if pooling == "eos":
    if eos_id is None:
      raise ValueError("eos pooling needs the id of the closing delimiter (eos_id)")
    hits = np.flatnonzero(text == eos_id)
    return int(hits[-1]) if hits.size else len(text) - 1
  if pooling == "last":
    return len(text) - 1
  if pooling in ("cls", "mean", "latent_attention"):
    return 0
  raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOL_POSITIONS}")


def pack_texts(tokens: np.ndarray, mask: np.ndarray, *, pooling: str, eos_id: int | None = None,
               pad_id: int = 0, rows_multiple: int = 1) -> PackedTexts:
  """Packs right-padded texts tokens, mask [N, L] into rows of length L.

  Args:
    pooling: the model's pooling; decides `pool_index` (the closing delimiter's
      last occurrence for eos, as `models.pooling.eos_index` does).
    pad_id: token id written into padding.
    rows_multiple: the row count is a multiple of this (the mesh's batch shards).

  Raises:
    ValueError: a text that is empty or not right-padded (named by its index).
  """
  tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
  if tokens.ndim != 2 or tokens.shape != mask.shape:
    raise ValueError(f"tokens and mask must both be [N, L], got {tokens.shape} and {mask.shape}")
  num_texts, row_length = tokens.shape
  lengths = mask.sum(axis=1)
  bad = np.flatnonzero((lengths == 0) | (mask.argmin(axis=1) < lengths) & (lengths < row_length))
  if bad.size:
    raise ValueError(f"texts {bad[:10].tolist()} are empty or not right-padded; packing needs "
                     "each text as a prefix of real tokens (delimiters included)")
  rows = _assign_rows(lengths, row_length)
  num_rows = bucket_rows(len(rows), rows_multiple, num_texts)
  packed = np.full((num_rows, row_length), pad_id, np.int32)
  segment_ids = np.zeros((num_rows, row_length), np.int32)
  text_of_token = np.full((num_rows, row_length), num_texts, np.int32)
  pool_index = np.zeros(num_texts, np.int32)
  for r, members in enumerate(rows):
    start = 0
    for segment, i in enumerate(members, start=1):
      n = int(lengths[i])
      text = tokens[i, :n]
      packed[r, start:start + n] = text
      segment_ids[r, start:start + n] = segment
      text_of_token[r, start:start + n] = i
      pool_index[i] = r * row_length + start + pool_offset(text, pooling, eos_id)
      start += n
  return PackedTexts(packed, segment_ids, text_of_token, pool_index)
