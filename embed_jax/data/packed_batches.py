"""Packing a host-local batch for the train step (numpy only, no tensorflow).

The train step embeds a batch in groups: chunk c (of `grad_cache_chunks`) of
shard k (of the mesh's batch shards) holds that shard's rows c*m..(c+1)*m
(`TrainStep._chunk`). A process's rows are its shards' rows back to back, so
group g = k_local * chunks + c is simply host rows g*m..(g+1)*m. Each group's
texts are packed on their own (`packing.pack_texts`) into the SAME number of
rows Rg, so that the packed row arrays chunk and shard exactly as the batch
does: rows [k][c][Rg] (shard-major, then chunk), and `_chunk` of a
[K*N*Rg, L] array gives chunk c's rows of every shard.

Packed batch (all int32; b texts on this host in G groups of m = b / G):
  {s}_packed_tokens   [G*Rs, Ls]  texts back to back, then `pad_id`
  {s}_segment_ids     [G*Rs, Ls]  1..S within each row, 0 = padding
  {s}_text_of_token   [G*Rs, Ls]  text of each token, LOCAL to its group
                                  (0..m-1; m*H-1 for neg), m (m*H) = padding
  {s}_pool_index      [b] (neg: [b, H])  flat index row*Ls + column of each
                                  text's pooled token, LOCAL to its group's Rs
                                  rows (0..Rs*Ls-1), in the original text order
for s in x, y and neg (neg texts in (row, h) order within a group), and
  neg_valid           [b, H]      1 for a real hard negative, 0 for a missing one
                                  (packed as a one-token placeholder; the loss masks it)
The padded `{s}_tokens`/`{s}_mask` are dropped; every other key (y_ids, ...)
passes through unchanged. Rs is the most rows any group of any process needs,
rounded by `packing.bucket_rows` so that few shapes compile.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import jax
import numpy as np

from embed_jax import partitioning
from embed_jax.data import packing

SIDES = ("x", "y", "neg")
PACKED_MARKER = "x_segment_ids"  # The key that tells a packed batch from a padded one.


def is_packed(batch: Mapping) -> bool:
  """True for a batch in the packed layout (see the module docstring)."""
  return PACKED_MARKER in batch


def _pad_rows(packed: packing.PackedTexts, rows: int, pad_id: int) -> packing.PackedTexts:
  """`packed` with padding rows appended up to `rows` (pool_index is unchanged)."""
  extra = rows - packed.tokens.shape[0]
  pad = lambda a, value: np.pad(a, ((0, extra), (0, 0)), constant_values=value)
  return packing.PackedTexts(pad(packed.tokens, pad_id), pad(packed.segment_ids, 0),
                             pad(packed.text_of_token, packed.num_texts), packed.pool_index)


_EXCHANGES = itertools.count()  # Processes pack the same batches in the same order.


def _agree_across_processes(rows: np.ndarray) -> np.ndarray:
  """The elementwise max of `rows` over all processes (itself with one process).

  Exchanged through the distributed key-value store (`partitioning.host_allgather`),
  not a device collective, so packing may run in the trainer's prefetch thread.
  """
  if jax.process_count() == 1:
    return rows
  gathered = partitioning.host_allgather(f"pack_rows/{next(_EXCHANGES)}", rows.tolist())
  return np.max(np.asarray(gathered, np.int64), axis=0)


def _placeholders_for_missing(tokens: np.ndarray, mask: np.ndarray, token_id: int
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens, mask, valid): empty texts [..., L] replaced by the one-token text `token_id`."""
  valid = mask.any(axis=-1)
  if valid.all():
    return tokens, mask, valid
  tokens, mask = tokens.copy(), mask.copy()
  tokens[~valid, 0] = token_id
  mask[~valid, 0] = 1
  return tokens, mask, valid


def pack_batch(batch: Mapping[str, np.ndarray], *, groups: int, pooling: str,
               closing_ids: Mapping[str, int] | None = None,
               pad_id: int = 0) -> dict[str, np.ndarray]:
  """Packs a host-local padded batch into the train step's packed layout.

  Args:
    batch: this process's rows: x_tokens, x_mask [b, Lx]; y_tokens, y_mask
      [b, Ly]; optionally neg_tokens, neg_mask [b, H, Ly]; any other keys.
    groups: this process's batch shards x grad_cache_chunks; b must divide by it.
    pooling: the model's pooling ("eos", "last", "mean", "cls").
    closing_ids: {"x": id, "y": id}, each side's closing delimiter (eos pooling
      only; negatives are y texts). `DualEncoderConfig.closing_id(side)`.
    pad_id: token id written into padding.

  Returns:
    The packed batch (module docstring). With several processes, every
    process must call this for the same step: they agree on the row counts.

  Raises:
    ValueError: b does not divide into groups, or an x or y text is empty or
      not right-padded. (A missing hard negative, all padding, becomes a
      placeholder marked 0 in `neg_valid`.)
  """
  b = batch["x_tokens"].shape[0]
  if groups < 1 or b % groups:
    raise ValueError(f"{b} host rows do not split into {groups} groups "
                     "(batch shards on this process x grad_cache_chunks)")
  m = b // groups
  sides = [s for s in SIDES if f"{s}_tokens" in batch]
  packed, extra = {}, {}
  for side in sides:
    tokens, mask = np.asarray(batch[f"{side}_tokens"]), np.asarray(batch[f"{side}_mask"])
    length = tokens.shape[-1]
    per_row = tokens[0].size // length  # Texts per batch row: 1, or H negatives.
    eos_id = None
    if pooling == "eos":
      eos_id = (closing_ids or {}).get("x" if side == "x" else "y")
    if side == "neg":
      tokens, mask, valid = _placeholders_for_missing(
          tokens, mask, pad_id if eos_id is None else eos_id)
      extra["neg_valid"] = valid.astype(np.int32)
    tokens = tokens.reshape(groups, m * per_row, length)  # Group g: rows g*m.., (row, h) order.
    mask = mask.reshape(groups, m * per_row, length)
    packed[side] = []
    for g in range(groups):
      try:
        packed[side].append(packing.pack_texts(tokens[g], mask[g], pooling=pooling, eos_id=eos_id,
                                               pad_id=pad_id))
      except ValueError as e:
        raise ValueError(f"cannot pack the {side} texts of batch rows [{g * m}, {(g + 1) * m}) "
                         f"(group {g}; text index = row * {per_row} + negative): {e}") from e
  needed = np.array([max(p.tokens.shape[0] for p in packed[s]) for s in sides], np.int64)
  needed = _agree_across_processes(needed)
  out = {k: v for k, v in batch.items()
         if not any(k in (f"{s}_tokens", f"{s}_mask") for s in sides)}
  out.update(extra)
  for side, rows in zip(sides, needed):
    rows = packing.bucket_rows(int(rows), 1, packed[side][0].num_texts)
    parts = [_pad_rows(p, rows, pad_id) for p in packed[side]]
    out[f"{side}_packed_tokens"] = np.concatenate([p.tokens for p in parts])
    out[f"{side}_segment_ids"] = np.concatenate([p.segment_ids for p in parts])
    out[f"{side}_text_of_token"] = np.concatenate([p.text_of_token for p in parts])
    pool_index = np.concatenate([p.pool_index for p in parts])
    out[f"{side}_pool_index"] = pool_index.reshape(batch[f"{side}_tokens"].shape[:-1])
  return out
