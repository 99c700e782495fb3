"""Exact top-k inner-product search with the corpus sharded over the device mesh.

The corpus embeddings [N, d] are split row-wise over every device of the mesh
(padded to equal shards). Each device scans its shard in chunks of
`chunk_size` rows, keeping a running top-k per query, so memory is bounded by
[queries, k + chunk_size] scores whatever N is; the per-device top-k lists
([devices, Q, k]) are then merged into the global top-k. Padding rows score
-inf and never win; k may exceed a shard (a shard then contributes its rows
plus -inf fillers). Equal scores resolve to the lower corpus row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from embed_jax import partitioning


def _merge_top_k(scores: jax.Array, ids: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Top k along the last axis of [Q, M] scores, carrying their ids."""
  top, where = jax.lax.top_k(scores, k)
  return top, jnp.take_along_axis(ids, where, axis=-1)


@functools.lru_cache(maxsize=32)
def _search_fn(mesh: Mesh, k: int, chunk: int, rows_per_shard: int, num_valid: int) -> Callable:
  """jit(queries [Q, d], corpus [D*rows_per_shard, d] sharded) -> (scores [Q, k], ids [Q, k])."""
  axes = tuple(mesh.axis_names)
  num_chunks = rows_per_shard // chunk

  def local(queries, shard):
    offset = jax.lax.axis_index(axes) * rows_per_shard
    q = queries.shape[0]
    init = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.full((q, k), -1, jnp.int32))
    init = jax.lax.pcast(init, axes, to="varying")

    def scan_chunk(best, i):
      block = jax.lax.dynamic_slice_in_dim(shard, i * chunk, chunk)
      scores = jnp.einsum("qd,nd->qn", queries, block, precision=jax.lax.Precision.HIGHEST,
                          preferred_element_type=jnp.float32)
      ids = offset + i * chunk + jnp.arange(chunk, dtype=jnp.int32)
      scores = jnp.where(ids[None, :] < num_valid, scores, -jnp.inf)
      merged = _merge_top_k(jnp.concatenate([best[0], scores], axis=1),
                            jnp.concatenate([best[1], jnp.broadcast_to(ids, scores.shape)], axis=1), k)
      return merged, None

    (scores, ids), _ = jax.lax.scan(scan_chunk, init, jnp.arange(num_chunks))
    return scores[None], ids[None]

  per_shard = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axes, None)),
                            out_specs=(P(axes), P(axes)))

  def search(queries, corpus):
    scores, ids = per_shard(queries, corpus)  # [D, Q, k] each.
    q = queries.shape[0]
    scores = jnp.transpose(scores, (1, 0, 2)).reshape(q, -1)
    ids = jnp.transpose(ids, (1, 0, 2)).reshape(q, -1)
    return _merge_top_k(scores, ids, k)

  replicated = NamedSharding(mesh, P())
  return jax.jit(search, out_shardings=(replicated, replicated))


@gin.configurable
class CorpusIndex:
  """A corpus of embeddings held sharded on the mesh, searched exactly by inner product.

  Args:
    embeddings: float [N, d] (L2-normalised embeddings make this cosine search).
    mesh: devices to shard over (all of its axes); None = the first local device.
    chunk_size: corpus rows scored at once per device; bounds memory to
      [query_batch_size, k + chunk_size] floats per device.
    query_batch_size: queries scored per step.
  """

  def __init__(self, embeddings: np.ndarray, mesh: Mesh | None = None, chunk_size: int = 8192,
               query_batch_size: int = 1024):
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
      raise ValueError(f"corpus embeddings must be [N > 0, d], got shape {embeddings.shape}")
    if chunk_size < 1 or query_batch_size < 1:
      raise ValueError("chunk_size and query_batch_size must be positive")
    self.mesh = mesh or partitioning.single_device_mesh()
    self.size, self.dim = embeddings.shape
    self.query_batch_size = query_batch_size
    devices = self.mesh.size
    rows = -(-self.size // devices)
    self.chunk = min(chunk_size, rows)
    self.rows_per_shard = -(-rows // self.chunk) * self.chunk
    padded = np.zeros((devices * self.rows_per_shard, self.dim), np.float32)
    padded[:self.size] = embeddings
    self.corpus = jax.device_put(padded, NamedSharding(self.mesh, P(tuple(self.mesh.axis_names), None)))

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k corpus rows per query: (scores float32 [Q, k'], ids int64 [Q, k']), best first.

    k' = min(k, N): asking for more rows than the corpus has returns them all.
    """
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f"queries must be [Q, {self.dim}], got shape {queries.shape}")
    if k < 1:
      raise ValueError(f"k must be positive, got {k}")
    k = min(k, self.size)
    batch = min(self.query_batch_size, max(8, -(-len(queries) // 8) * 8))
    fn = _search_fn(self.mesh, k, self.chunk, self.rows_per_shard, self.size)
    scores, ids = [], []
    for start in range(0, len(queries), batch):
      block = queries[start:start + batch]
      padded = np.zeros((batch, self.dim), np.float32)
      padded[:len(block)] = block
      s, i = jax.device_get(fn(padded, self.corpus))
      scores.append(s[:len(block)])
      ids.append(i[:len(block)])
    if not scores:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(ids).astype(np.int64)


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, *, mesh: Mesh | None = None,
          chunk_size: int = 8192, query_batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Exact inner-product top-k of `queries` [Q, d] in `corpus` [N, d]: (scores, ids), each [Q, min(k, N)]."""
  index = CorpusIndex(corpus, mesh, chunk_size=chunk_size, query_batch_size=query_batch_size)
  return index.search(queries, k)
