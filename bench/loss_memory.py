"""Per-device memory of the contrastive losses (loss + gradients), from the compiler, not a run.

For each impl and global batch B, lowers and compiles
`jit(value_and_grad(contrastive_loss))` w.r.t. x, y and log_temp on 8 fake CPU
devices (mesh data=8) and prints `memory_analysis().temp_size_in_bytes`, i.e. the
scratch memory one device needs beyond its inputs and outputs, with its ratio
to that device's own embeddings (B/8 x d x 4 bytes). Nothing is executed, so
batches of a million rows can be measured on a laptop.

A second table measures the ring with Matryoshka (3 prefixes) and a guide
(GISTEmbed masking, guide embeddings of width --guide_dim riding the ring), with
its ratio to the device's own inputs (x, y and the guide's gx, gy).

  python bench/loss_memory.py            # B in 4096 .. 1048576, d = 1024
  python bench/loss_memory.py --smoke    # the smallest B only (CI)
"""

from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# pylint: disable=wrong-import-position
import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from embed_jax import partitioning
from embed_jax.losses import IMPLS, contrastive_loss

BATCHES = (4096, 16384, 65536, 262144, 1048576)
TERM_BATCHES = (65536, 262144, 1048576)


def compiled_terms_temp_bytes(batch: int, dim: int, guide_dim: int, mesh, tile_size: int) -> int:
  """Temporary bytes per device of ring + Matryoshka (d/4, d/2, d) + guide, loss and grads."""
  def loss(x, y, log_temp, gx, gy):
    return contrastive_loss(x, y, log_temp, mesh=mesh, impl="ring", tile_size=tile_size,
                            matryoshka_dims=(dim // 4, dim // 2, dim), guide=(gx, gy),
                            guide_margin=0.05)[0]

  sharded = partitioning.batch_sharding(mesh, 2)
  embeddings = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sharded)
  guide = jax.ShapeDtypeStruct((batch, guide_dim), jnp.float32, sharding=sharded)
  log_temp = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  compiled = step.lower(embeddings, embeddings, log_temp, guide, guide).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def compiled_temp_bytes(impl: str, batch: int, dim: int, mesh, tile_size: int) -> int:
  """Temporary bytes per device of the compiled loss-and-gradient function."""
  def loss(x, y, log_temp):
    return contrastive_loss(x, y, log_temp, mesh=mesh, impl=impl, tile_size=tile_size)[0]

  sharded = partitioning.batch_sharding(mesh, 2)
  embeddings = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sharded)
  log_temp = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  compiled = step.lower(embeddings, embeddings, log_temp).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def human(num_bytes: float) -> str:
  """Bytes in the largest binary unit that keeps the number at least 1 (up to TiB)."""
  for unit in ("B", "KiB", "MiB", "GiB"):
    if num_bytes < 1024:
      return f"{num_bytes:.1f} {unit}"
    num_bytes /= 1024
  return f"{num_bytes:.1f} TiB"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="only the smallest batch")
  parser.add_argument("--dim", type=int, default=1024)
  parser.add_argument("--tile_size", type=int, default=1024)
  parser.add_argument("--guide_dim", type=int, default=384)
  args = parser.parse_args()
  batches = BATCHES[:1] if args.smoke else BATCHES
  mesh = partitioning.create_mesh(data=8)
  shards = partitioning.batch_size_multiple(mesh)
  print(f"# {partitioning.describe(mesh)}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; d={args.dim}, tile={args.tile_size}, float32")
  print("# temp = compiled temporary memory per device of loss + grads (x, y, log_temp);")
  print(f"# ratio = temp / local embeddings (B/{shards} x d x 4 bytes)")
  print(f"| {'B':>9} | {'impl':>9} | {'temp / device':>14} | {'ratio':>10} | compile s |")
  print(f"|{'-' * 11}|{'-' * 11}|{'-' * 16}|{'-' * 12}|-----------|")
  for batch in batches:
    local_bytes = batch // shards * args.dim * 4
    for impl in IMPLS:
      start = time.perf_counter()
      try:
        temp = compiled_temp_bytes(impl, batch, args.dim, mesh, args.tile_size)
        cells = (human(temp), f"{temp / local_bytes:.2f}")
      except Exception as error:  # pylint: disable=broad-except
        reason = str(error).strip().splitlines()[0][:80] if str(error).strip() else type(error).__name__
        cells = ("does not compile", "-")
        print(f"# {impl} at B={batch}: {type(error).__name__}: {reason}", file=sys.stderr)
      seconds = time.perf_counter() - start
      print(f"| {batch:>9} | {impl:>9} | {cells[0]:>14} | {cells[1]:>10} | {seconds:>9.1f} |",
            flush=True)
  terms(BATCHES[:1] if args.smoke else TERM_BATCHES, args, mesh, shards)


def terms(batches, args, mesh, shards: int) -> None:
  """The ring with Matryoshka (d/4, d/2, d) and a guide: temp against the device's inputs."""
  dims = (args.dim // 4, args.dim // 2, args.dim)
  print(f"\n# ring + Matryoshka {dims} + guide (dg={args.guide_dim}, margin 0.05);")
  print(f"# ratio = temp / device inputs (B/{shards} x (2d + 2dg) x 4 bytes: x, y, gx, gy)")
  print(f"| {'B':>9} | {'temp / device':>14} | {'inputs / device':>15} | {'ratio':>6} | compile s |")
  print(f"|{'-' * 11}|{'-' * 16}|{'-' * 17}|{'-' * 8}|-----------|")
  for batch in batches:
    input_bytes = batch // shards * (2 * args.dim + 2 * args.guide_dim) * 4
    start = time.perf_counter()
    temp = compiled_terms_temp_bytes(batch, args.dim, args.guide_dim, mesh, args.tile_size)
    seconds = time.perf_counter() - start
    print(f"| {batch:>9} | {human(temp):>14} | {human(input_bytes):>15} | "
          f"{temp / input_bytes:>6.2f} | {seconds:>9.1f} |", flush=True)


if __name__ == "__main__":
  main()

