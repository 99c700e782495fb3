"""Host-local numpy batches -> global `jax.Array`s sharded over the mesh's batch axes.

Each process feeds the contiguous rows `partitioning.host_local_batch_slice`
gives it; `jax.make_array_from_process_local_data` assembles the global array,
sharded by `partitioning.batch_sharding`. No tensorflow here: the train step
sees only jax arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import Mesh

from embed_jax import partitioning


class HostBatchIterator(Protocol):
  """What GlobalBatchIterator wraps (e.g. `pipeline.PairBatchIterator`)."""

  global_batch_size: int
  local_rows: slice

  def __next__(self) -> dict[str, np.ndarray]: ...

  def get_state(self) -> dict: ...

  def set_state(self, state: Mapping) -> None: ...


def check_process_rows(mesh: Mesh, global_batch_size: int, local_rows: slice,
                       rules: partitioning.LogicalRules | None = None) -> None:
  """Raises unless this process's devices hold exactly rows `local_rows` of the batch.

  True for meshes from `partitioning.create_mesh` (each process's devices are
  contiguous along the batch axes); a hand-made mesh may interleave processes.
  """
  sharding = partitioning.batch_sharding(mesh, 1, rules)
  held = set()
  for index in sharding.addressable_devices_indices_map((global_batch_size,)).values():
    held.update(range(*index[0].indices(global_batch_size)))
  if held != set(range(local_rows.start, local_rows.stop)):
    raise ValueError(
        f"this process feeds rows [{local_rows.start}, {local_rows.stop}) of the global batch, "
        f"but its devices hold rows {sorted(held)[:4]}...; build the mesh with "
        f"partitioning.create_mesh so each process's devices are contiguous")


def to_global(host_batch: Mapping[str, np.ndarray], mesh: Mesh, global_batch_size: int,
              rules: partitioning.LogicalRules | None = None,
              local_batch_size: int | None = None) -> dict[str, jax.Array]:
  """Global arrays [global_batch_size, ...] from this process's rows of each feature.

  With `local_batch_size` (this process's share of the batch), an array of r
  local rows becomes r * global_batch_size / local_batch_size global rows, so
  arrays whose leading dimension is not the batch (packed rows) work too.
  """
  out = {}
  for name, local in host_batch.items():
    sharding = partitioning.batch_sharding(mesh, local.ndim, rules)
    rows = global_batch_size
    if local_batch_size is not None:
      rows = local.shape[0] * global_batch_size // local_batch_size
    out[name] = jax.make_array_from_process_local_data(sharding, local, (rows,) + local.shape[1:])
  return out


class GlobalBatchIterator:
  """Iterates global batches (dicts of sharded jax.Array); state as the host iterator's.

  Args:
    host_iterator: gives this process's rows of each global batch.
    mesh: the device mesh; the batch is sharded over its batch axes.
    rules: logical axis rules (default `partitioning.DEFAULT_RULES`).
    transform: applied to each host batch before it becomes global (e.g.
      `packed_batches.pack_batch`); leading dimensions scale from this
      process's share to the global batch. The iterator state is the host
      iterator's either way.
  """

  def __init__(self, host_iterator: HostBatchIterator, mesh: Mesh,
               rules: partitioning.LogicalRules | None = None,
               transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None):
    self.host_iterator = host_iterator
    self.mesh = mesh
    self.rules = rules
    self.transform = transform
    multiple = partitioning.batch_size_multiple(mesh, rules)
    if host_iterator.global_batch_size % multiple:
      raise partitioning.MeshShapeError(
          f"global batch {host_iterator.global_batch_size} is not divisible by the "
          f"{multiple} batch shards of the mesh; use a multiple of {multiple}")
    check_process_rows(mesh, host_iterator.global_batch_size, host_iterator.local_rows, rules)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    batch = next(self.host_iterator)
    if self.transform is not None:
      batch = self.transform(batch)
    rows = self.host_iterator.local_rows
    return to_global(batch, self.mesh, self.host_iterator.global_batch_size, self.rules,
                     local_batch_size=rows.stop - rows.start)

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position (store it in the training checkpoint)."""
    return self.host_iterator.get_state()

  def set_state(self, state: Mapping) -> None:
    """Continues after the batch at which `state` was taken."""
    self.host_iterator.set_state(state)
