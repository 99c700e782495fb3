"""The `embed-jax` command line: one subcommand per job, gin flags shared by all.

    embed-jax SUBCOMMAND [--gin_file=F ...] [--gin.NAME=VALUE ...] [subcommand flags]

Each subcommand lives in its own module, imported only when chosen, so `--help`
is fast and a subcommand that needs no tensorflow never imports it. A
subcommand module provides `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from embed_jax.errors import UserError

# name -> (module, one-line help). Later work registers its subcommands here.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("embed_jax.cli.compare", "one row per run directory: the settings that differ, "
                "steps, final loss and evaluation (--plot METRIC --by BINDING: a PNG)"),
    "config": ("embed_jax.cli.config", "print the gin config that the given files and overrides produce"),
    "data": ("embed_jax.cli.data", "show, measure or train a vocabulary for a data task"),
    "convert": ("embed_jax.cli.convert", "import a Hugging Face / sentence-transformers folder or "
                ".gguf file into a model directory"),
    "embed": ("embed_jax.cli.embed", "embed the lines of a text or JSONL file with a model directory"),
    "eval": ("embed_jax.cli.eval", "score a model on probe, STS, retrieval and code-search tasks"),
    "export": ("embed_jax.cli.export", "write a model directory as sentence-transformers folder(s)"),
    "mine": ("embed_jax.cli.mine", "hard negatives for a pair file, by a model directory or BM25"),
    "search": ("embed_jax.cli.search", "exact top-k search of a corpus file, sharded over devices"),
    "train": ("embed_jax.cli.train", "train an embedding model (resumes from --model_dir)"),
}


class CommandLineError(UserError):
  """A user mistake on the command line, reported without a traceback."""


VERBOSE_FLAG = "--verbose"


def debugging() -> bool:
  """True when user errors should show their traceback (`--verbose` or EMBED_JAX_DEBUG=1)."""
  return os.environ.get("EMBED_JAX_DEBUG", "") not in ("", "0") or VERBOSE_FLAG in sys.argv


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """Separates `--gin_file` and `--gin.NAME=VALUE` flags from the rest of argv.

  Returns:
    (gin_files, gin_bindings, remaining_argv).
  """
  files, bindings, rest = [], [], []
  it = iter(argv)
  for arg in it:
    if arg.startswith("--gin_file="):
      files.append(arg.split("=", 1)[1])
    elif arg == "--gin_file":
      try:
        files.append(next(it))
      except StopIteration:
        raise CommandLineError("--gin_file needs a file name") from None
    elif arg.startswith("--gin."):
      bindings.append(arg[len("--gin."):])
    elif arg == "--gin" or arg.startswith("--gin="):
      raise CommandLineError(f"{arg}: use --gin.NAME=VALUE")
    else:
      rest.append(arg)
  return files, bindings, rest


def _top_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="embed-jax",
      description="Contrastive pre-training of text and code embeddings in JAX.",
      epilog="Gin flags, accepted by every subcommand: --gin_file=FILE (repeatable; "
      "searched in the current folder and in configs/) and --gin.NAME=VALUE overrides. "
      "User errors print one line (exit code 2); --verbose or EMBED_JAX_DEBUG=1 adds the "
      "traceback.",
  )
  sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
  for name, (_, help_text) in SUBCOMMANDS.items():
    sub.add_parser(name, help=help_text, add_help=False)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Parses argv, applies gin config, and runs the chosen subcommand; returns the exit code."""
  argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != VERBOSE_FLAG]
  gin_files, gin_bindings, rest = split_gin_flags(argv)
  top = _top_parser()
  if not rest or rest[0] in ("-h", "--help") or rest[0] not in SUBCOMMANDS:
    if rest and rest[0] not in ("-h", "--help"):
      top.print_usage(sys.stderr)
      print(f"embed-jax: unknown subcommand {rest[0]!r}; choose from {', '.join(SUBCOMMANDS)}",
            file=sys.stderr)
      return 2
    top.print_help()
    return 0 if rest else 2
  name = rest[0]
  module = importlib.import_module(SUBCOMMANDS[name][0])
  parser = argparse.ArgumentParser(prog=f"embed-jax {name}", description=SUBCOMMANDS[name][1])
  parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                      help="gin config file (repeatable; also searched in configs/)")
  module.add_arguments(parser)
  args = parser.parse_args(rest[1:])
  args.gin_files = gin_files
  args.gin_bindings = gin_bindings
  return int(module.run(args) or 0)


def console_main() -> None:
  """Entry point of the `embed-jax` console script."""
  try:
    sys.exit(main())
  except UserError as e:
    if debugging():
      traceback.print_exc()
    print(f"embed-jax: error: {one_line(e)}", file=sys.stderr)
    sys.exit(2)


def one_line(error: BaseException) -> str:
  """The error's message on one line (a multi-line message is joined)."""
  return " ".join(str(error).split())


if __name__ == "__main__":
  # Run the imported module's copy, so that subcommands raising
  # embed_jax.main.CommandLineError are caught by the same class.
  from embed_jax.main import console_main as _console_main  # pylint: disable=import-self
  _console_main()
