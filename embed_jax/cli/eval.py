"""`embed-jax eval`: score a model directory on the paper's evaluation tasks.

    embed-jax eval --model DIR --tasks stsb,scifact,cosqa --data_dir ../shared/datasets --out DIR

Tasks: mr cr subj mpqa sst2 trec mrpc (linear probes), stsb (Spearman),
sts:PATH (the STS protocol on any folder in the STS-B layout; several may be
given), cosqa stdlib_code (code search), or the name of a folder under
--data_dir: BEIR retrieval when it holds corpus.jsonl (e.g. scifact), STS when
it holds sts-test.csv. `--split dev` reads the BEIR qrels/dev.tsv and
sts-dev.csv instead of the test files. Texts are embedded at the length the
model directory records unless `--max_length` says otherwise; `--dim D`
truncates embeddings to their first D dimensions, re-normalised (Matryoshka).
Writes results.json (keyed by task), report.md and PNG plots into --out;
retrieval tasks also report a BM25 baseline.
"""

from __future__ import annotations

import argparse
import logging

from embed_jax import gin_config
from embed_jax.cli import add_dtype_argument, add_model_options, apply_model_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", required=True, help="model directory (from convert or train)")
  parser.add_argument("--tasks", required=True, help="comma-separated task names")
  parser.add_argument("--data_dir", default="../shared/datasets",
                      help="folder holding senteval/, stsb/, cosqa/ and BEIR folders")
  parser.add_argument("--out", required=True, help="folder for results.json, report.md and plots")
  parser.add_argument("--batch_size", type=int, default=128, help="texts per embedding step")
  parser.add_argument("--max_length", type=int, default=None,
                      help="tokens per text, delimiters included (default: the length the model "
                      "directory records, else the encoder's maximum)")
  parser.add_argument("--split", choices=("test", "dev"), default="test",
                      help="BEIR qrels/<split>.tsv and STS sts-<split>.csv to score")
  parser.add_argument("--dim", type=int, default=None,
                      help="keep the first D embedding dimensions, re-normalised (Matryoshka)")
  add_dtype_argument(parser)
  add_model_options(parser)
  parser.add_argument("--limit", type=int, default=None,
                      help="smoke runs: at most this many examples per split (queries for retrieval)")


def run(args: argparse.Namespace) -> int:
  from embed_jax import partitioning  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import model_dir  # pylint: disable=import-outside-toplevel
  from embed_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  from embed_jax.evaluation import model_embed, report, runner, tasks  # pylint: disable=import-outside-toplevel
  from embed_jax.main import CommandLineError  # pylint: disable=import-outside-toplevel
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  logging.getLogger("embed_jax").setLevel(logging.INFO)  # Our per-task lines, not orbax's.
  gin_config.parse(args.gin_files, args.gin_bindings)
  names = [t.strip() for t in args.tasks.split(",") if t.strip()]
  if not names:
    raise CommandLineError("--tasks is empty")
  try:
    for name in names:
      tasks.get_task(name, args.data_dir, args.split)
  except ValueError as e:
    raise CommandLineError(str(e)) from None
  mesh = partitioning.create_mesh()
  try:
    model = apply_model_options(model_dir.load_model(args.model, mesh, compute_dtype=args.dtype),
                                args)
    max_length = model_embed.max_length_for(model, args.max_length)
    embed_for = runner.model_embed_fn(model, mesh, args.batch_size, max_length, args.dim)
    info = {"model": str(model.directory), "max_length": max_length, "split": args.split}
    if args.dim is not None:
      info["dim"] = args.dim
    results = runner.run_tasks(embed_for, names, args.data_dir, args.out, mesh, args.limit,
                               info=info, split=args.split)
  except (UserError, model_dir.ModelDirError) as e:
    raise CommandLineError(str(e)) from None
  print(report.markdown_table(results))
  for note in report.notes(results):
    print(note)
  print(f"wrote {args.out}/results.json, report.md and plots")
  return 0
