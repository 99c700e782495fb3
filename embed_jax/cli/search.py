"""`embed-jax search`: exact top-k search of a corpus file for each query, sharded over the devices.

    embed-jax search --model DIR --corpus corpus.jsonl --queries queries.jsonl --k 10 [--output hits.jsonl]

Files are JSONL with `_id` (or `id`) and `text` (and an optional `title`, joined
before the text as BEIR does), or plain text with one text per line (ids are
line numbers from 1). Documents are embedded as side y, queries as side x.
Writes one JSON line per query: {"query_id", "query", "hits": [{"id", "score"}, ...]}.
A repeated id is an error naming its line. Texts are embedded at the length the
model directory records unless `--max_length` says otherwise; `--dim D` keeps
the first D dimensions, re-normalised (Matryoshka).
"""

from __future__ import annotations

import argparse
import json
import sys

from embed_jax import gin_config, paths
from embed_jax.cli import add_dtype_argument, add_model_options, apply_model_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", required=True, help="model directory (from convert or train)")
  parser.add_argument("--corpus", required=True, help="documents: .jsonl (_id, text[, title]) or text lines")
  parser.add_argument("--queries", required=True, help="queries: .jsonl (_id, text) or text lines")
  parser.add_argument("--k", type=int, default=10, help="hits per query")
  parser.add_argument("--output", help="JSONL file for the hits (default: stdout)")
  parser.add_argument("--batch_size", type=int, default=128, help="texts per embedding step")
  parser.add_argument("--max_length", type=int, default=None, help="tokens per text (default: the model's)")
  add_dtype_argument(parser)
  add_model_options(parser)
  parser.add_argument("--dim", type=int, default=None,
                      help="keep the first D embedding dimensions, re-normalised (Matryoshka)")
  parser.add_argument("--chunk_size", type=int, default=8192, help="corpus rows scored at once per device")


def read_texts(path: str) -> tuple[list[str], list[str]]:
  """(ids, texts) of a JSONL file with `_id`/`id` and `text` fields, or of a text file (a line each)."""
  from embed_jax.evaluation import formats  # pylint: disable=import-outside-toplevel
  ids, texts = [], []
  first_line: dict[str, int] = {}
  try:
    with paths.path(path).open("r", encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise formats.DataFormatError(f"{path}: cannot read ({e})") from None
  as_jsonl = path.endswith(".jsonl")
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    if not as_jsonl:
      ids.append(str(number))
      texts.append(line)
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise formats.DataFormatError(f"{path}:{number}: not a JSON object ({e.msg})") from None
    key = "_id" if isinstance(record, dict) and "_id" in record else "id"
    if not isinstance(record, dict) or key not in record or "text" not in record:
      raise formats.DataFormatError(
          f"{path}:{number}: expected a JSON object with fields '_id' (or 'id') and 'text'")
    if str(record[key]) in first_line:
      raise formats.DataFormatError(f"{path}:{number}: duplicate {key} {str(record[key])!r} (first "
                                    f"on line {first_line[str(record[key])]})")
    first_line[str(record[key])] = number
    ids.append(str(record[key]))
    texts.append(formats.beir_document_text(record.get("title", ""), record["text"]))
  if not texts:
    raise formats.DataFormatError(f"{path}: no texts")
  return ids, texts


def run(args: argparse.Namespace) -> int:
  from embed_jax import partitioning  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import model_dir  # pylint: disable=import-outside-toplevel
  from embed_jax.evaluation import formats, model_embed, search  # pylint: disable=import-outside-toplevel
  from embed_jax.main import CommandLineError  # pylint: disable=import-outside-toplevel
  gin_config.parse(args.gin_files, args.gin_bindings)
  if args.k < 1:
    raise CommandLineError(f"--k must be positive, got {args.k}")
  try:
    doc_ids, documents = read_texts(args.corpus)
    query_ids, queries = read_texts(args.queries)
    mesh = partitioning.create_mesh()
    model = apply_model_options(model_dir.load_model(args.model, mesh, compute_dtype=args.dtype),
                                args)
    model_embed.check_dim(args.dim, model_embed.embedding_size(model))
    max_length = model_embed.max_length_for(model, args.max_length)
  except (formats.DataFormatError, model_dir.ModelDirError, model_embed.DimensionError) as e:
    raise CommandLineError(str(e)) from None
  options = dict(mesh=mesh, batch_size=args.batch_size, max_length=max_length, dim=args.dim)
  doc_vectors = model_embed.embed(model, documents, "y", progress="corpus", **options)
  query_vectors = model_embed.embed(model, queries, "x", progress="queries", **options)
  index = search.CorpusIndex(doc_vectors, mesh, chunk_size=args.chunk_size)
  scores, rows = index.search(query_vectors, args.k)
  out = paths.path(args.output).open("w", encoding="utf-8") if args.output else sys.stdout
  try:
    for qid, query, hit_rows, hit_scores in zip(query_ids, queries, rows, scores):
      hits = [{"id": doc_ids[r], "score": float(s)} for r, s in zip(hit_rows, hit_scores)]
      out.write(json.dumps({"query_id": qid, "query": query, "hits": hits}, ensure_ascii=False) + "\n")
  finally:
    if args.output:
      out.close()
  return 0
