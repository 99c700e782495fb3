"""How much the training loop's host work costs: the real loop against one fed a pre-made batch.

Both runs are the trainer itself (`embed_jax.train.trainer.train`) on the tiny
model with real packed data (the built-in stdlib_code corpus): the "real"
run reads, tokenises, packs and places every batch; the "pre-made" run is
given the first batch again and again, so the loop's device work and
bookkeeping are the same and only the host's data work is missing. The
figure is the ratio of their median steps/s, `host_efficiency R` (1.0: the
host work is hidden entirely). `--prefetch 0` measures the loop without the
background batch thread (the loop before it existed reads metrics every step
and prepares each batch only after the previous step finished).

    python bench/host_overhead.py [--steps 60] [--prefetch 2] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Repeat:
  """A GlobalBatchIterator that yields its first batch forever (position: the real one's)."""

  def __init__(self, batches):
    self.host_iterator = batches.host_iterator
    self._batches = batches
    self._first = None

  def __next__(self):
    if self._first is None:
      self._first = next(self._batches)
    return self._first

  def get_state(self):
    return self._batches.get_state()

  def set_state(self, state):
    self._batches.set_state(state)


def _run(model_dir: str, steps: int, prefetch: int, repeat: bool, batch_size: int) -> list[float]:
  """Per-step pairs/s of one run (metrics.jsonl, every step logged)."""
  import gin  # pylint: disable=import-outside-toplevel

  from embed_jax import gin_config  # pylint: disable=import-outside-toplevel
  from embed_jax.train import metrics, trainer  # pylint: disable=import-outside-toplevel
  gin_config.reset()
  gin_config.parse(["models/tiny.gin", "data/stdlib_code.gin", "data/vocab_minilm.gin"], [
      "DecoderConfig.vocab_size=30528", "DecoderConfig.max_length=128",
      "text_encoder.sentencepiece_model=None",
      f"DataConfig.batch_size={batch_size}", "DataConfig.x_length=32", "DataConfig.y_length=128",
      f"train.steps={steps}", f"train.checkpoint_every={steps}", "train.log_every=1",
      "train.eval_code_search=False", "train.eval_validation_batches=0", "train.progress=False",
      "train.tensorboard=False", f"train.prefetch={prefetch}"])
  real_batches = trainer._batches  # pylint: disable=protected-access
  if repeat:
    trainer._batches = lambda *a, **k: _Repeat(real_batches(*a, **k))  # pylint: disable=protected-access
  try:
    trainer.train(model_dir)
  finally:
    trainer._batches = real_batches  # pylint: disable=protected-access
    gin.clear_config(clear_constants=True)
  return [r["pairs_per_s"] for r in metrics.read_records(os.path.join(model_dir, "metrics.jsonl"))
          if r["split"] == "train"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--prefetch", type=int, default=2, help="train.prefetch (0: no thread)")
  parser.add_argument("--warmup", type=int, default=10, help="steps left out (compiles)")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
  args = parser.parse_args()
  if args.smoke:
    args.steps, args.batch_size, args.warmup = 4, 16, 1
  rates = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, repeat in (("pre-made", True), ("real", False)):
      per_step = _run(os.path.join(tmp, name), args.steps, args.prefetch, repeat, args.batch_size)
      rates[name] = statistics.median(per_step[args.warmup:]) / args.batch_size
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores; tiny model, stdlib_code packed, "
        f"batch {args.batch_size}, {args.steps} steps (median after {args.warmup}), "
        f"train.prefetch={args.prefetch}")
  for name, rate in rates.items():
    print(f"  {name:9s} {rate:8.2f} steps/s")
  print(f"host_efficiency {rates['real'] / rates['pre-made']:.3f}")


if __name__ == "__main__":
  main()
