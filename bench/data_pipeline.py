"""Pairs per second of the data pipeline alone (host work: read, tokenise, convert, batch).

Streams a pair file (`file_task(streaming=True)`, `DataConfig.streaming`) or holds it in memory,
tokenised with the packaged MiniLM vocabulary, at the given global batch; prints the median
pairs/s over `--steps` batches after `--warmup`. Compare with the train step's pairs/s for
MiniLM at the same batch (bench/mfu.py): the pipeline should be >= 5x faster so it never starves
the device. Pin one core with `taskset -c 0` to measure "one core".

    python bench/data_pipeline.py [--pairs FILE.jsonl] [--batch 64] [--steps 60] [--in_memory]

Default pairs: the built-in python_code train split (extracted on first use).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pairs", help="JSONL pair file (default: python_code's train split)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--x_length", type=int, default=64)
  parser.add_argument("--y_length", type=int, default=256)
  parser.add_argument("--in_memory", action="store_true", help="PairBatchIterator instead of streaming")
  args = parser.parse_args()

  from embed_jax import gin_config  # pylint: disable=import-outside-toplevel
  from embed_jax.data import code_corpus, pipeline, tasks  # pylint: disable=import-outside-toplevel
  gin_config.parse(["data/vocab_minilm.gin"], [])
  path = args.pairs or code_corpus.corpus_file("python_code", "train")
  name = tasks.file_task(name="bench_pairs", train=path, streaming=not args.in_memory)
  config = pipeline.DataConfig(task=name, batch_size=args.batch, x_length=args.x_length,
                               y_length=args.y_length, streaming=not args.in_memory)
  start = time.perf_counter()
  iterator = pipeline.host_batch_iterator(config)
  for _ in range(args.warmup):
    next(iterator)
  ready = time.perf_counter() - start
  # Streams read 256 examples at a time, so single batches are either instant or a whole read:
  # the rate is taken over all steps, in thirds to show the spread.
  thirds = []
  for part in range(3):
    t = time.perf_counter()
    for _ in range(args.steps // 3):
      next(iterator)
    thirds.append(args.batch * (args.steps // 3) / (time.perf_counter() - t))
  mode = "in memory" if args.in_memory else "streaming"
  print(f"data pipeline ({mode}, batch {args.batch}, x/y {args.x_length}/{args.y_length}, "
        f"{os.cpu_count()} CPUs visible): {statistics.median(thirds):.0f} pairs/s "
        f"(thirds: {', '.join(f'{r:.0f}' for r in thirds)}); first {args.warmup} batches after {ready:.1f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
