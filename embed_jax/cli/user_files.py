"""`--train_files` and friends: a task over the user's own pair files, without a gin file.

    embed-jax train --train_files 'pairs/*.jsonl' [--validation_files ...] [--test_files ...]
        [--x_field query --y_field positive --negatives_field negatives]
        [--teacher_scores_field scores]

registers the file task `user_files` (what `file_task` in a gin file would)
and makes it gin's `DataConfig.task`. Shared by `train` and `data show/stats`.
"""

from __future__ import annotations

import argparse

import gin

TASK_NAME = "user_files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("pair files (instead of a DataConfig.task in gin)")
  for split in ("train", "validation", "test"):
    group.add_argument(f"--{split}_files", action="append", default=[], metavar="GLOB",
                       help=f"JSONL/TSV pair file(s) or glob(s) of the {split} split (repeatable)")
  group.add_argument("--x_field", default="x", help="JSON field / TSV column of the query (x)")
  group.add_argument("--y_field", default="y", help="JSON field / TSV column of the positive (y)")
  group.add_argument("--negatives_field", action="append", default=[],
                     help="field(s) of hard negatives (repeatable; JSONL: a string or a list)")
  group.add_argument("--teacher_scores_field", default=None,
                     help="field of a teacher's scores of the positive and each negative "
                          "(1 + negatives numbers; for ContrastiveObjective.distill)")


def apply(args: argparse.Namespace) -> str | None:
  """Registers the files' task and binds `DataConfig.task` to it; its name, or None without files.

  Call after gin is parsed (the binding overrides the files').
  """
  splits = {s: getattr(args, f"{s}_files", None) for s in ("train", "validation", "test")}
  splits = {s: list(v) for s, v in splits.items() if v}
  if not splits:
    return None
  from embed_jax.data import tasks  # pylint: disable=import-outside-toplevel  # tensorflow side.
  name = tasks.file_task(name=TASK_NAME, x_field=args.x_field, y_field=args.y_field,
                         negatives_field=tuple(args.negatives_field),
                         teacher_scores_field=getattr(args, "teacher_scores_field", None), **splits)
  with gin.unlock_config():
    gin.bind_parameter("DataConfig.task", name)
  return name
