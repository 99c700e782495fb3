"""GradCache's cost: step time and memory with grad_cache_chunks in {1, 2, 4, 8} at one global batch.

Every setting trains on the same batches (the packaged all-MiniLM-L6-v2 on
stdlib_code pairs, each side padded to `--max_length`, so every chunking sees
one shape) and keeps the whole global batch as negatives; only how many
examples hold activations at once changes. Memory is from the compiler
(`memory_analysis().temp_size_in_bytes`, per device: scratch beyond params,
optimizer state and the batch). That holds params-sized buffers too (the
gradients, the optimizer's update), so the activation memory is the temp of
the step at the benchmark's batch minus the temp of the same step (same
chunks) at one pair per chunk. Time is the median step after a warm-up, the
settings alternating.

  python bench/grad_cache_overhead.py          # batch 64, length 128
  python bench/grad_cache_overhead.py --smoke  # tiny sizes (CI)

The last lines are `time_ratio_N R` and `memory_ratio_N R` (activations) against chunks = 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=wrong-import-position
import argparse
import itertools
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_utils
from embed_jax import partitioning
from embed_jax.train.updater import StepConfig

CHUNKS = (1, 2, 4, 8)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
  args = parser.parse_args()
  chunks = CHUNKS
  if args.smoke:
    args.batch_size, args.max_length, args.rounds, chunks = 8, 32, 1, (1, 4)
  mesh = partitioning.create_mesh()
  pairs = bench_utils.stdlib_code_pairs(args.batch_size * 4, seed=3)

  with tempfile.TemporaryDirectory() as tmp:
    model = bench_utils.convert_minilm(os.path.join(tmp, "minilm"), mesh)
    batches = [bench_utils.pair_batch(model.text_encoder, pairs[i:i + args.batch_size],
                                      args.max_length, bucketed=False)
               for i in range(0, len(pairs), args.batch_size)]
    runners = {n: bench_utils.StepRunner(model.module, model.params, mesh,
                                         StepConfig(grad_cache_chunks=n, pack=False)) for n in chunks}
    temp = lambda n, batch: runners[n].compiled(batch).memory_analysis().temp_size_in_bytes
    memory = {n: temp(n, batches[0]) for n in chunks}
    activations = {n: memory[n] - temp(n, {k: v[:n] for k, v in batches[0].items()}) for n in chunks}
    cycles = {n: itertools.cycle(batches) for n in chunks}
    seconds = bench_utils.median_rounds(
        {n: bench_utils.timed(lambda n=n: runners[n](next(cycles[n]))) for n in chunks},
        args.rounds)

  print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {partitioning.describe(mesh)}")
  print(f"all-MiniLM-L6-v2, batch {args.batch_size} pairs (all negatives of each other), "
        f"x and y padded to {args.max_length}; median of {args.rounds} steps")
  print("| chunks | step s | time ratio | temp / device | activations / device | activation ratio |")
  print("|--------|--------|------------|---------------|----------------------|------------------|")
  for n in chunks:
    print(f"| {n:6d} | {seconds[n]:6.2f} | {seconds[n] / seconds[1]:10.2f} | "
          f"{memory[n] / 2**20:9.1f} MiB | {activations[n] / 2**20:16.1f} MiB | "
          f"{activations[n] / activations[1]:16.2f} |")
  for n in chunks[1:]:
    print(f"time_ratio_{n} {seconds[n] / seconds[1]:.2f}")
    print(f"memory_ratio_{n} {activations[n] / activations[1]:.2f}")


if __name__ == "__main__":
  main()
