"""`embed-jax mine`: hard negatives for a pair file, by a model directory (dense) or BM25.

    embed-jax mine --model DIR --input pairs.jsonl --output mined.jsonl [--corpus FILE]
                   [--retriever dense|bm25] [--num_negatives 5] [--range_min 0 --range_max 99]
                   [--max_score S] [--relative_margin 0.95] [--absolute_margin M]
                   [--sampling top|random] [--seed 0]

The corpus is the distinct y texts of the pairs, plus the texts of `--corpus`
when given (text lines, or JSONL with `_id`/`id`, `text` and an optional
`title`, as `embed-jax search` reads).
Documents are embedded as side y and queries as side x (at the model's
recorded length; `--dim` truncates, as in `embed`), and ranked exactly with
the sharded `CorpusIndex`; `--retriever bm25` ranks by BM25 instead and needs
no model. The rules that pick each pair's negatives (ranks, margins to the
positive, sampling, exclusion of the positive, of the query's other positives
and of the query itself) are `embed_jax.evaluation.mining`'s.

Writes one JSON object per pair, in input order: {x_field, y_field,
negatives_field: [texts]}, which `file_task(negatives_field=...)` and
`--negatives_field` read; then prints one stats line (pairs with all
negatives, filter removals). Pairs are mined in chunks of `--chunk_pairs`,
appended to OUT.partial, with progress in OUT.partial.json; a killed run given
the same command continues after the last finished chunk (corpus embeddings
are recomputed) and ends with the same file an uninterrupted run writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from embed_jax import gin_config
from embed_jax.cli import add_dtype_argument

RETRIEVERS = ("dense", "bm25")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--input", required=True, action="append",
                      help="pair file(s) or glob(s), JSONL or TSV (repeatable)")
  parser.add_argument("--output", required=True, help="JSONL file for the pairs with negatives")
  parser.add_argument("--model", help="model directory (needed by --retriever dense)")
  parser.add_argument("--retriever", choices=RETRIEVERS, default="dense")
  parser.add_argument("--corpus", help="more candidate texts: text lines, or .jsonl with _id and text")
  parser.add_argument("--x_field", default="x", help="field / column of the query")
  parser.add_argument("--y_field", default="y", help="field / column of the positive")
  parser.add_argument("--negatives_field", default="negatives", help="output field of the negatives")
  parser.add_argument("--num_negatives", type=int, default=5)
  parser.add_argument("--range_min", type=int, default=0,
                      help="first rank (0-based, after exclusions) that may be a negative")
  parser.add_argument("--range_max", type=int, default=99, help="last rank that may be a negative")
  parser.add_argument("--max_score", type=float, help="drop candidates scoring above this")
  parser.add_argument("--relative_margin", type=float,
                      help="drop candidates scoring above this times the positive's score")
  parser.add_argument("--absolute_margin", type=float,
                      help="drop candidates scoring above the positive's score minus this")
  parser.add_argument("--sampling", choices=("top", "random"), default="top")
  parser.add_argument("--seed", type=int, default=0, help="seed of --sampling random")
  parser.add_argument("--batch_size", type=int, default=128, help="texts per embedding step")
  parser.add_argument("--max_length", type=int, help="tokens per text (default: the model's)")
  parser.add_argument("--dim", type=int, help="keep the first D dimensions, re-normalised")
  add_dtype_argument(parser)
  parser.add_argument("--chunk_size", type=int, default=8192, help="corpus rows scored at once per device")
  parser.add_argument("--chunk_pairs", type=int, default=4096, help="pairs mined (and saved) at once")
  parser.add_argument("--no_progress", action="store_true", help="no progress bars")


def _settings(args, mining):
  return mining.MiningSettings(
      num_negatives=args.num_negatives, range_min=args.range_min, range_max=args.range_max,
      max_score=args.max_score, relative_margin=args.relative_margin,
      absolute_margin=args.absolute_margin, sampling=args.sampling, seed=args.seed)


def _fingerprint(args, settings) -> dict:
  """What must match for a partial output to be continued."""
  return {"settings": dataclasses.asdict(settings), "input": args.input, "corpus": args.corpus,
          "model": args.model, "retriever": args.retriever, "dim": args.dim,
          "max_length": args.max_length, "fields": [args.x_field, args.y_field, args.negatives_field],
          "chunk_pairs": args.chunk_pairs}


def _resume_point(partial: str, progress: str, fingerprint: dict) -> tuple[int, int, dict | None]:
  """(pairs done, bytes of OUT.partial they fill, stats so far) of a run to continue, else (0, 0, None)."""
  if not (os.path.isfile(partial) and os.path.isfile(progress)):
    return 0, 0, None
  try:
    with open(progress, encoding="utf-8") as f:
      record = json.load(f)
  except (OSError, json.JSONDecodeError):
    return 0, 0, None
  if (not isinstance(record, dict) or record.get("fingerprint") != fingerprint
      or not {"pairs_done", "bytes", "stats"} <= set(record)
      or os.path.getsize(partial) < record["bytes"]):
    return 0, 0, None  # Another command's or damaged: start afresh.
  return record["pairs_done"], record["bytes"], record["stats"]


def _scorer(args, corpus, mining):
  from embed_jax.main import CommandLineError  # pylint: disable=import-outside-toplevel
  if args.retriever == "bm25":
    return mining.BM25Scorer(corpus)
  if not args.model:
    raise CommandLineError("--retriever dense needs --model DIR (or use --retriever bm25)")
  from embed_jax import partitioning  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import model_dir  # pylint: disable=import-outside-toplevel
  from embed_jax.evaluation import model_embed  # pylint: disable=import-outside-toplevel
  mesh = partitioning.create_mesh()
  model = model_dir.load_model(args.model, mesh, compute_dtype=args.dtype)
  model_embed.check_dim(args.dim, model_embed.embedding_size(model))

  def embed(texts, side):
    label = False if args.no_progress else ("corpus" if side == "y" else "queries")
    return model_embed.embed(model, texts, side, mesh=mesh, batch_size=args.batch_size,
                             max_length=args.max_length, dim=args.dim, progress=label)
  return mining.DenseScorer(embed, corpus, mesh, chunk_size=args.chunk_size)


def run(args: argparse.Namespace) -> int:
  from embed_jax.cli import search as search_cli  # pylint: disable=import-outside-toplevel
  from embed_jax.data import pair_files  # pylint: disable=import-outside-toplevel
  from embed_jax.evaluation import mining  # pylint: disable=import-outside-toplevel
  from embed_jax.main import CommandLineError  # pylint: disable=import-outside-toplevel
  gin_config.parse(args.gin_files, args.gin_bindings)
  if args.chunk_pairs < 1:
    raise CommandLineError(f"--chunk_pairs must be positive, got {args.chunk_pairs}")
  if os.path.abspath(args.output) in {os.path.abspath(p) for p in args.input}:
    raise CommandLineError(f"--output {args.output} is also an --input; write to another file")
  settings = _settings(args, mining)
  pairs = pair_files.read_pairs(args.input, pair_files.PairFields(args.x_field, args.y_field))
  extra = search_cli.read_texts(args.corpus)[1] if args.corpus else []
  corpus, row_of = mining.build_corpus(pairs.y, extra)
  scorer = _scorer(args, corpus, mining)

  partial, progress = args.output + ".partial", args.output + ".partial.json"
  fingerprint = _fingerprint(args, settings)
  start, size, saved = _resume_point(partial, progress, fingerprint)
  stats = mining.MiningStats(**{k: v for k, v in (saved or {}).items()})
  if start:
    print(f"continuing {partial} after {start} of {len(pairs)} pairs", file=sys.stderr)
  chunks = mining.mine_chunks(pairs.x, pairs.y, row_of, scorer, settings, start=start,
                              chunk_pairs=args.chunk_pairs, stats=stats)
  if not args.no_progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    total = -(-(len(pairs) - start) // args.chunk_pairs)
    chunks = tqdm(chunks, total=total, desc="mining", unit="chunk", leave=False)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(partial, "r+b" if start else "wb") as out:
    out.truncate(size)
    out.seek(size)
    for begin, chosen in chunks:
      for i, rows in enumerate(chosen, begin):
        record = {args.x_field: pairs.x[i], args.y_field: pairs.y[i],
                  args.negatives_field: [corpus[r] for r in rows]}
        out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
      out.flush()
      os.fsync(out.fileno())
      _write_progress(progress, fingerprint, begin + len(chosen), out.tell(), stats)
  os.replace(partial, args.output)
  os.remove(progress)
  print("mined " + json.dumps({"output": args.output, "corpus": len(corpus), **stats.as_dict()}))
  return 0


def _write_progress(path: str, fingerprint: dict, pairs_done: int, size: int, stats) -> None:
  record = {"fingerprint": fingerprint, "pairs_done": pairs_done, "bytes": size,
            "stats": dataclasses.asdict(stats)}
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(record, f)
  os.replace(path + ".tmp", path)
