"""What the trainer tests share: a tiny run's gin bindings, in-process and subprocess runs, readers.

The runs train the tiny decoder (configs/models/tiny.gin) on synthetic pairs
with the dense `reference` loss: the sharded impls are proven equal to it in
tests/losses, and on CPU gloo their collectives cost seconds a step across
processes.
"""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from embed_jax import gin_config
from embed_jax.checkpoints import model_dir as model_dir_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 8
COMPARED = ("loss", "accuracy", "grad_norm", "temperature", "learning_rate")
GIN_FILES = ["models/tiny.gin", "data/vocab_minilm.gin"]
# Restarted runs compile the same programs again: a cache shared by the subprocesses.
COMPILATION_CACHE = tempfile.mkdtemp(prefix="embed_jax_train_test_xla_cache_")
atexit.register(shutil.rmtree, COMPILATION_CACHE, ignore_errors=True)


def bindings(tokenizer_json, steps=STEPS):
  return [
      f"text_encoder.tokenizer_json='{tokenizer_json}'",
      "DecoderConfig.vocab_size=30528", "DecoderConfig.max_length=32",
      "DecoderConfig.dropout_rate=0.1",
      f"train.steps={steps}", "train.data_source='synthetic'", "train.checkpoint_every=2",
      "train.keep=3", "train.log_every=1", "train.eval_code_search=False", "train.progress=False",
      "train.tensorboard=False", "train.compute_dtype='float32'",
      "SyntheticPairs.batch_size=16", "SyntheticPairs.x_length=16", "SyntheticPairs.y_length=16",
      "SyntheticPairs.num_negatives=1",
      "ContrastiveObjective.loss_impl='reference'",
      "learning_rate_schedule.learning_rate=3e-3", "learning_rate_schedule.warmup_steps=4",
  ]


def train_in_process(model_dir, tokenizer_json, extra=(), steps=STEPS, **kwargs):
  from embed_jax.train import trainer  # pylint: disable=import-outside-toplevel
  import gin  # pylint: disable=import-outside-toplevel
  gin.clear_config(clear_constants=True)
  gin_config.parse(GIN_FILES, bindings(tokenizer_json, steps) + list(extra))
  try:
    return trainer.train(str(model_dir), **kwargs)
  finally:
    gin.clear_config(clear_constants=True)


def final_params(model_dir):
  model = model_dir_lib.load_model(os.path.join(model_dir, "final"))
  return model_dir_lib.params_to_numpy(model.params)


def records(model_dir):
  """Every record of metrics.jsonl, in order."""
  with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def metrics(model_dir):
  """The train record of each step (the file holds one per step: a resume truncates it)."""
  return {r["step"]: r for r in records(model_dir) if r["split"] == "train"}


def assert_same_run(dir_a, dir_b, atol=1e-6, steps=STEPS):
  import jax  # pylint: disable=import-outside-toplevel
  for a, b in zip(jax.tree.leaves(final_params(dir_a)), jax.tree.leaves(final_params(dir_b))):
    np.testing.assert_allclose(b, a, atol=atol, rtol=0)
  ma, mb = metrics(dir_a), metrics(dir_b)
  assert sorted(ma) == sorted(mb) == list(range(1, steps + 1))
  for step in ma:
    for key in COMPARED:
      assert mb[step][key] == pytest.approx(ma[step][key], abs=atol, rel=atol), (step, key)


def env(devices=8):
  """The subprocesses' environment: `devices` fake CPU devices, one shared compilation cache."""
  out = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_DEFAULT_MATMUL_PRECISION="highest", PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3",
             JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return out


def command(model_dir, tokenizer_json, extra=(), steps=STEPS):
  args = [sys.executable, "-m", "embed_jax.main", "train", f"--model_dir={model_dir}"]
  args += [f"--gin_file={f}" for f in GIN_FILES]
  args += [f"--gin.{b}" for b in bindings(tokenizer_json, steps)] + list(extra)
  return args


def start(model_dir, tokenizer_json, devices=8, extra=(), log=None, steps=STEPS, **popen):
  return subprocess.Popen(command(model_dir, tokenizer_json, extra, steps), env=env(devices),
                          cwd=REPO_ROOT, stdout=log or subprocess.DEVNULL,
                          stderr=subprocess.STDOUT, **popen)


def train_lines(model_dir):
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return sum('"split": "train"' in line for line in f)


def wait_for(predicate, proc, timeout=240, what="the condition"):
  """Polls `predicate()` until true; False if `proc` ended first; kills it after `timeout`."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.005)
  proc.kill()
  raise TimeoutError(f"timed out waiting for {what}")


def wait_for_steps(proc, model_dir, count, timeout=240):
  """Waits until metrics.jsonl has `count` train lines; returns False if the run ended first."""
  return wait_for(lambda: train_lines(model_dir) >= count, proc, timeout,
                  f"{count} steps in {model_dir}")


def checkpoint_steps(model_dir):
  folder = os.path.join(model_dir, "checkpoints")
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def tree_listing(folder):
  """{relative path: (size, mtime_ns)} of every file below `folder`: proof nothing was touched."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      stat = os.stat(path)
      out[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
  return out
