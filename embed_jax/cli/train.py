"""`embed-jax train`: a gin-configured training run (t5x-style).

    embed-jax train --gin_file=runs/quickstart.gin --model_dir=DIR [--gin.train.steps=100 ...]
    embed-jax train --gin_file=runs/quickstart.gin --model_dir=DIR --train_files 'pairs/*.jsonl'

Running the same command again resumes from DIR's latest checkpoint. A user
mistake (config, data, mesh, batch, model_dir) is one line and exit code 2;
too many non-finite steps exit 3, a failed checkpoint save exits 4. Multi-host:
pass --coordinator_address/--num_processes/--process_id (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) on every host.
"""

from __future__ import annotations

import argparse
import os
import sys

from embed_jax import gin_config
from embed_jax.cli import user_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model_dir", required=True,
                      help="the run's folder, local or gs:// (created; resumed if present)")
  parser.add_argument("--coordinator_address", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                      help="host:port of process 0, for multi-host runs")
  parser.add_argument("--num_processes", type=_int_flag("--num_processes"),
                      default=os.environ.get("JAX_NUM_PROCESSES") or None,
                      help="processes in a multi-host run")
  parser.add_argument("--process_id", type=_int_flag("--process_id"),
                      default=os.environ.get("JAX_PROCESS_ID") or None,
                      help="this process's index in a multi-host run")
  user_files.add_arguments(parser)


def _int_flag(name: str):
  def parse(text: str) -> int:
    try:
      return int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
  return parse


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
  """`jax.distributed.initialize` when a multi-process run is described; CPU uses gloo collectives."""
  if not coordinator_address and not num_processes:
    return
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=int(num_processes) if num_processes else None,
                             process_id=int(process_id) if process_id is not None else None)


def run(args: argparse.Namespace) -> int:
  initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  from embed_jax.train import checkpointing, trainer  # pylint: disable=import-outside-toplevel
  gin_config.parse(args.gin_files, args.gin_bindings)
  user_files.apply(args)
  try:
    summary = trainer.train(args.model_dir)
  except trainer.NonFiniteError as e:
    print(f"embed-jax train: {e}", file=sys.stderr)
    return trainer.EXIT_NONFINITE
  except checkpointing.CheckpointSaveError as e:
    print(f"embed-jax train: error: {e}", file=sys.stderr)
    return trainer.EXIT_SAVE_FAILED
  if summary["stopped_by"]:
    return 128 + {"SIGTERM": 15, "SIGINT": 2}.get(summary["stopped_by"], 0)
  if summary.get("final_eval"):
    shown = ", ".join(f"{k}={v:.4f}" for k, v in summary["final_eval"].items())
    print(f"final evaluation at step {summary['step']}: {shown}")
  print(f"final model: {summary['final_model']}")
  if summary.get("export"):
    print(f"exported for sentence-transformers: {summary['export']} "
          "(SentenceTransformer(path).encode(texts, normalize_embeddings=True))")
  table = _code_search_table(summary)
  if table:
    print(table)
  return 0


def _code_search_table(summary: dict) -> str:
  """Held-out stdlib_code MRR@10 before/after training and BM25's, as far as the run measured them."""
  from embed_jax.train import eval_hook  # pylint: disable=import-outside-toplevel
  key = eval_hook.MRR_KEY
  rows = [(label, summary[name][key]) for label, name in (
      ("before training (step 0)", "initial_eval"),
      (f"after training (step {summary['step']})", "final_eval"),
      ("BM25 (bm25s)", "bm25_eval")) if key in (summary.get(name) or {})]
  return eval_hook.mrr_table(rows, "stdlib_code test split, docstring -> function") if rows else ""
