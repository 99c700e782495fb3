"""`embed-jax embed`: embed every line (or JSONL field) of a file with a model directory.

    embed-jax embed --model DIR --input FILE [--field NAME] --output OUT.npy|OUT.jsonl
                    [--side x|y] [--batch_size 64] [--max_length N] [--dim D]

Each line is one text (JSONL with `--field`: one object per line, the text in
that field). Empty lines embed as the empty text (its delimiters alone); row i
of the output is line i of the input. Texts are sorted by length into padded
buckets and each batch is sharded over the local devices (`embed_texts`).
`--max_length` defaults to the length the model was made for (a
sentence-transformers model's max_seq_length), else the encoder's maximum.
`--dim D` keeps the first D dimensions of each embedding, re-normalised
(Matryoshka truncation).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from embed_jax import paths
from embed_jax.cli import add_dtype_argument, add_model_options, apply_model_options
from embed_jax.main import CommandLineError

OUTPUT_FORMATS = (".npy", ".jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", required=True, help="a model directory (embed-jax convert / train)")
  parser.add_argument("--input", required=True, help="text file, one text per line (or JSONL with --field)")
  parser.add_argument("--field", help="read the input as JSONL and embed this field of each object")
  parser.add_argument("--output", required=True, help="OUT.npy (float32 [N, d]) or OUT.jsonl")
  parser.add_argument("--side", choices=("x", "y"), default="x", help="which side's template to use")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--max_length", type=int, help="tokens per text, delimiters included")
  parser.add_argument("--dim", type=int, help="keep the first D dimensions, re-normalised (Matryoshka)")
  add_dtype_argument(parser)
  add_model_options(parser)
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def read_texts(path: str | Path, field: str | None = None) -> list[str]:
  """The texts of `path`: one per line, or field `field` of each JSONL line.

  A final newline does not start another text; "\\r\\n" endings are accepted.

  Raises:
    CommandLineError: naming the file and line of undecodable bytes, bad JSON,
      a missing field or a non-string value.
  """
  path = paths.path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise CommandLineError(f"cannot read --input {path}: {e.strerror or e}") from None
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()
  texts = []
  for number, raw in enumerate(lines, start=1):
    try:
      line = raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError as e:
      raise CommandLineError(f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if field is None:
      texts.append(line)
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise CommandLineError(f"{path}:{number}: not a JSON object ({e.msg})") from None
    if not isinstance(record, dict) or field not in record:
      raise CommandLineError(f"{path}:{number}: no field {field!r} in this line")
    if not isinstance(record[field], str):
      raise CommandLineError(
          f"{path}:{number}: field {field!r} is {type(record[field]).__name__}, not a string")
    texts.append(record[field])
  return texts


def write_embeddings(path: str | Path, embeddings: np.ndarray) -> None:
  """Writes float32 [N, d] as .npy, or as JSONL lines {"index": i, "embedding": [...]}."""
  path = paths.path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".npy":
    with path.open("wb") as f:
      np.save(f, embeddings.astype(np.float32))
    return
  with path.open("w", encoding="utf-8") as f:
    for i, row in enumerate(embeddings):
      f.write(json.dumps({"index": i, "embedding": [float(v) for v in row]}) + "\n")


def run(args: argparse.Namespace) -> int:
  if Path(args.output).suffix not in OUTPUT_FORMATS:
    raise CommandLineError(f"--output {args.output}: the file name must end in one of {OUTPUT_FORMATS}")
  texts = read_texts(args.input, args.field)
  import jax  # pylint: disable=import-outside-toplevel
  from embed_jax import gin_config, partitioning  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import model_dir  # pylint: disable=import-outside-toplevel
  from embed_jax.evaluation import model_embed  # pylint: disable=import-outside-toplevel
  if args.gin_files or args.gin_bindings:
    gin_config.parse(args.gin_files, args.gin_bindings)
  mesh = partitioning.create_mesh(devices=jax.local_devices())
  try:
    loaded = model_dir.load_model(args.model, mesh=mesh, compute_dtype=args.dtype)
  except model_dir.ModelDirError as e:
    raise CommandLineError(str(e)) from None
  loaded = apply_model_options(loaded, args, side=args.side)
  embeddings = model_embed.embed(loaded, texts, args.side, batch_size=args.batch_size,
                                 max_length=args.max_length, dim=args.dim, mesh=mesh,
                                 progress=False if args.no_progress else f"embedding {args.input}")
  write_embeddings(args.output, embeddings)
  print(f"wrote {embeddings.shape[0]} embeddings of size {embeddings.shape[1]} to {args.output}")
  return 0
