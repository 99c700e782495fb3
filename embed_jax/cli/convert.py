"""`embed-jax convert`: a Hugging Face / sentence-transformers folder or a .gguf file -> model directory.

    embed-jax convert --from PATH --out DIR [--pooling eos|last|mean|cls]
                      [--add_delimiters | --no-add_delimiters] [--x_prefix TOKEN ...]

See `embed_jax.checkpoints.convert` for what is kept and what is added.
"""

from __future__ import annotations

import argparse

from embed_jax.main import CommandLineError

TEMPLATE_FLAGS = ("x_prefix", "x_suffix", "y_prefix", "y_suffix")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--from", dest="source", required=True,
                      help="a transformers or sentence-transformers model folder, or a .gguf file")
  parser.add_argument("--out", required=True, help="the model directory to write")
  parser.add_argument("--pooling", choices=("eos", "last", "mean", "cls"),
                      help="default: the sentence-transformers pooling, else eos")
  parser.add_argument("--add_delimiters", action=argparse.BooleanOptionalAction, default=None,
                      help="wrap each side in delimiter tokens, adding them to the vocabulary when "
                      "missing (default: yes, except for sentence-transformers folders)")
  for flag in TEMPLATE_FLAGS:
    parser.add_argument(f"--{flag}", action="append", metavar="TOKEN",
                        help=f"{flag.replace('_', ' ')} token (repeatable; default x: [ ], y: {{ }})")
  parser.add_argument("--dtype", help="compute dtype of the encoder, e.g. bfloat16")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run(args: argparse.Namespace) -> int:
  from embed_jax.checkpoints import convert, model_dir  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints.hf_config import HFConversionError  # pylint: disable=import-outside-toplevel
  templates = {f: tuple(getattr(args, f)) for f in TEMPLATE_FLAGS if getattr(args, f)}
  overrides = {"dtype": args.dtype} if args.dtype else {}
  try:
    out = convert.convert(args.source, args.out, pooling=args.pooling,
                          add_delimiters=args.add_delimiters, templates=templates,
                          overwrite=args.overwrite, **overrides)
    loaded = model_dir.read_model_record(out)
  except (HFConversionError, model_dir.ModelDirError, ValueError) as e:
    raise CommandLineError(str(e)) from None
  config = loaded["config"]
  print(f"wrote {out}: {config['encoder']['type']} with {config['pooling']} pooling, "
        f"added tokens {loaded['metadata'].get('added_tokens') or 'none'}; "
        f"use --gin_file={out}/model.gin or --model {out}")
  return 0
