"""`embed-jax train`: a gin-configured training run (t5x-style).

    embed-jax train --gin_file=runs/quickstart.gin --model_dir=DIR [--gin.train.steps=100 ...]

Running the same command again resumes from DIR's latest checkpoint. Multi-host:
pass --coordinator_address/--num_processes/--process_id (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) on every host.
"""

from __future__ import annotations

import argparse
import os
import sys

from embed_jax import gin_config
from embed_jax.main import CommandLineError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model_dir", required=True, help="the run's folder (created; resumed if present)")
  parser.add_argument("--coordinator_address", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                      help="host:port of process 0, for multi-host runs")
  parser.add_argument("--num_processes", type=int,
                      default=_env_int("JAX_NUM_PROCESSES"), help="processes in a multi-host run")
  parser.add_argument("--process_id", type=int, default=_env_int("JAX_PROCESS_ID"),
                      help="this process's index in a multi-host run")


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value else None


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
  """`jax.distributed.initialize` when a multi-process run is described; CPU uses gloo collectives."""
  if not coordinator_address and not num_processes:
    return
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def run(args: argparse.Namespace) -> int:
  initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  from embed_jax.train import trainer  # pylint: disable=import-outside-toplevel
  gin_config.parse(args.gin_files, args.gin_bindings)
  from embed_jax.checkpoints import export_st, model_dir  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints.hf_config import HFConversionError  # pylint: disable=import-outside-toplevel
  try:
    summary = trainer.train(args.model_dir)
  except trainer.NonFiniteError as e:
    print(f"embed-jax train: {e}", file=sys.stderr)
    return trainer.EXIT_NONFINITE
  except (HFConversionError, model_dir.ModelDirError, export_st.ExportError) as e:
    raise CommandLineError(str(e)) from None
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
