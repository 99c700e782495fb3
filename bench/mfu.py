"""Model FLOPs utilisation of the contrastive train step, against this machine's measured peak.

MFU = model FLOPs per step (analytic, counting real tokens only: padding and
recomputation are not model work) / measured step time / the measured peak of
a large matrix product on the same device in the same run. XLA's own count of
the compiled step (padding, recomputation and elementwise work included) is
printed beside it as the hardware FLOPs utilisation.

  python bench/mfu.py                  # all-MiniLM-L6-v2, stdlib_code pairs, batch 64, length 128, CPU float32
  python bench/mfu.py --pack           # the same with texts packed into shared rows
  python bench/mfu.py --device gpu --model gpt2_medium --dtype bfloat16 --batch_size 64 --max_length 512
                                       # a 355M decoder on full-length rows, bfloat16 peak (a lent GPU)
  python bench/mfu.py --smoke          # tiny sizes (CI)

`--model minilm` is the packaged all-MiniLM-L6-v2 on real pairs; any other name
is a configs/models/NAME.gin shape, randomly initialised, fed random full-length
rows (every token real).
"""

from __future__ import annotations

import os
import sys

if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "gpu":
  os.environ.setdefault("JAX_PLATFORMS", "cuda")
else:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=wrong-import-position
import argparse
import dataclasses
import platform
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np

import bench_utils
from embed_jax import flops, partitioning
from embed_jax.train.updater import StepConfig, compiled_flops

X_IDS, Y_IDS = (1, 2), (3, 4)


def _configured_model(name: str, dtype: str, remat_policy: str | None,
                      attention_impl: str | None):
  """(module, params) of configs/models/NAME.gin, random-initialised on the default mesh."""
  import gin  # pylint: disable=import-outside-toplevel

  from embed_jax import gin_config  # pylint: disable=import-outside-toplevel
  from embed_jax.models.dual_encoder import DualEncoderConfig  # pylint: disable=import-outside-toplevel
  from embed_jax.models.sharded_init import init_dual_encoder  # pylint: disable=import-outside-toplevel
  gin_config.parse([f"models/{name}.gin"], [])
  config = DualEncoderConfig()  # pylint: disable=no-value-for-parameter
  gin.clear_config()
  encoder = dataclasses.replace(config.encoder, dtype=dtype, dropout_rate=0.0,
                                attention_dropout_rate=0.0,
                                remat_policy=remat_policy or config.encoder.remat_policy,
                                attention_impl=attention_impl or config.encoder.attention_impl)
  config = dataclasses.replace(config, encoder=encoder, x_delimiter_ids=X_IDS, y_delimiter_ids=Y_IDS)
  return init_dual_encoder(config, jax.random.key(0), partitioning.create_mesh())


def _full_rows(config, batch_size: int, length: int, seed: int) -> dict[str, np.ndarray]:
  """Random full-length pairs (every token real), each side wrapped in its delimiters."""
  rng = np.random.default_rng(seed)
  batch = {"y_ids": np.arange(batch_size, dtype=np.int32)}
  for side, (open_id, close_id) in (("x", X_IDS), ("y", Y_IDS)):
    tokens = rng.integers(10, config.encoder.vocab_size, size=(batch_size, length), dtype=np.int32)
    tokens[:, 0], tokens[:, -1] = open_id, close_id
    batch[f"{side}_tokens"], batch[f"{side}_mask"] = tokens, np.ones_like(tokens)
  return batch


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--model", default="minilm", help="minilm, or a configs/models/NAME.gin")
  parser.add_argument("--dtype", default=None, help="compute dtype (default float32 on CPU, "
                      "bfloat16 on GPU); params stay float32")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
  parser.add_argument("--pack", action=argparse.BooleanOptionalAction, default=False)
  parser.add_argument("--remat_policy", default=None, choices=("none", "full", "dots", "dots_no_batch"),
                      help="override the encoder's rematerialisation (configured models)")
  parser.add_argument("--attention_impl", default=None, choices=("fused", "xla", "cudnn"),
                      help="attention implementation (configured models; default: fused on CPU, "
                           "jax's choice elsewhere)")
  parser.add_argument("--peak_size", type=int, default=None, help="matmul side for the peak")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
  args = parser.parse_args()
  if args.smoke:
    args.batch_size, args.max_length, args.steps, args.peak_size = 8, 32, 1, 512
  dtype = args.dtype or ("bfloat16" if args.device == "gpu" else "float32")
  peak_size = args.peak_size or (8192 if args.device == "gpu" else 4096)
  mesh = partitioning.create_mesh()

  with tempfile.TemporaryDirectory() as tmp:
    if args.model == "minilm":
      loaded = bench_utils.convert_minilm(os.path.join(tmp, "minilm"), mesh, compute_dtype=dtype)
      module, params, pad_id = loaded.module, loaded.params, loaded.text_encoder.pad_id
      if args.remat_policy or args.attention_impl:
        raise SystemExit("--remat_policy and --attention_impl apply to configured models (--model NAME)")
      pairs = bench_utils.stdlib_code_pairs(args.batch_size * (args.steps + 1), seed=2)
      batches = [bench_utils.pair_batch(loaded.text_encoder, pairs[i:i + args.batch_size],
                                        args.max_length)
                 for i in range(0, len(pairs), args.batch_size)]
    else:
      module, params = _configured_model(args.model, dtype, args.remat_policy,
                                         args.attention_impl)
      pad_id = 0
      batches = [_full_rows(module.config, args.batch_size, args.max_length, seed)
                 for seed in range(args.steps + 1)]
    config = module.config
    runner = bench_utils.StepRunner(module, params, mesh, StepConfig(pack=args.pack),
                                    pad_id=pad_id, dropout=False)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), runner.state.params)
    model_flops, xla_flops, seconds = [], [], []
    for i, padded in enumerate(batches):
      batch = runner.pack(padded) if args.pack else padded
      compiled = runner.compiled(batch)
      timer = bench_utils.timed(lambda b=batch: runner(b))
      timer()  # Compiles (first of its shape) and warms up.
      if i == 0:
        continue  # The warm-up batch.
      seconds.append(timer())
      model_flops.append(flops.real_train_step_flops(
          config, abstract, padded["x_mask"].sum(-1), padded["y_mask"].sum(-1)))
      xla_flops.append(compiled_flops(compiled) * mesh.size)
    peak = bench_utils.matmul_peak_flops(peak_size, jnp.dtype(dtype), device=jax.devices()[0])

  step_seconds = float(np.median(seconds))
  achieved = float(np.median(model_flops)) / step_seconds
  device = jax.devices()[0]
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores; device {device.device_kind} "
        f"x {mesh.size}; {partitioning.describe(mesh)}")
  print(f"model {args.model} ({flops.matmul_params(abstract) / 1e6:.1f}M matrix params), "
        f"{dtype} compute, batch {args.batch_size} pairs, max length {args.max_length}, "
        f"{'packed' if args.pack else 'bucketed'} rows; median of {len(seconds)} steps")
  print(f"step time            {step_seconds * 1e3:10.1f} ms ({args.batch_size / step_seconds:.1f} pairs/s)")
  print(f"model FLOPs/step     {np.median(model_flops):10.4g} (real tokens only)")
  print(f"XLA FLOPs/step       {np.median(xla_flops):10.4g} (as compiled: padding, recompute)")
  print(f"achieved             {achieved / 1e9:10.1f} GFLOP/s of model work")
  print(f"matmul peak          {peak / 1e9:10.1f} GFLOP/s ({peak_size}^2 {dtype} on one device, best of 5)")
  print(f"hfu {np.median(xla_flops) / step_seconds / (peak * mesh.size):.3f}")
  print(f"mfu {achieved / (peak * mesh.size):.3f}")


if __name__ == "__main__":
  main()
