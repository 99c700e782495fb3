"""The ring loss's per-device memory stays linear in the local rows (compiled, never run).

`memory_analysis()` of the compiled loss-and-gradient function needs no
execution, so a batch whose gather logits would take a gigabyte per device is
only lowered and compiled here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from embed_jax import partitioning
from embed_jax.losses import contrastive_loss


def temp_bytes(impl: str, mesh, batch: int, dim: int, tile_size: int) -> int:
  def loss(x, y, log_temp):
    return contrastive_loss(x, y, log_temp, mesh=mesh, impl=impl, tile_size=tile_size)[0]

  embeddings = jax.ShapeDtypeStruct((batch, dim), jnp.float32,
                                    sharding=partitioning.batch_sharding(mesh, 2))
  log_temp = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(
      embeddings, embeddings, log_temp).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_ring_memory_is_a_small_multiple_of_the_local_embeddings():
  mesh = partitioning.create_mesh(data=8)
  batch, dim, tile = 8 * 4096, 128, 256
  local_embedding_bytes = batch // 8 * dim * 4  # 2 MiB
  ring = temp_bytes("ring", mesh, batch, dim, tile)
  gather = temp_bytes("gather", mesh, batch, dim, tile)
  assert ring < 8 * local_embedding_bytes, (ring, local_embedding_bytes)
  # gather holds 2 x 4096 x 32768 float32 logits per device: ~1 GiB.
  assert gather > 2 * 4096 * batch * 4
  assert gather > 50 * ring
