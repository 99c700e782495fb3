"""`embed-jax data`: look at a task's examples, measure them, train a vocabulary.

    embed-jax data show  --gin_file=data/stdlib_code.gin [-n 5] [--task T] [--split S]
    embed-jax data stats --gin_file=data/stdlib_code.gin [--task T] [--split S]
    embed-jax data stats --gin_file=data/vocab_minilm.gin --train_files 'pairs/*.jsonl' --x_field query --y_field positive
    embed-jax data train-vocab --output=vocab.model [--vocab_size=8000] [--input=FILE ...]
    embed-jax data decontaminate --input 'pairs/*.jsonl' --against ../shared/datasets --out clean/

`show` prints examples after preprocessing and truncation to the configured
lengths, decoded with their delimiters; `stats` prints counts, token-length
percentiles and truncation rates. The task and lengths come from gin's
`DataConfig` (`--task` / `--split` override), the vocabulary from `text_encoder`.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

import numpy as np

from embed_jax import gin_config
from embed_jax.cli import user_files

PERCENTILES = (50, 90, 99)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
  show = actions.add_parser("show", help="print decoded examples of a task after preprocessing")
  stats = actions.add_parser("stats", help="print counts, length percentiles and truncation rates")
  for sub in (show, stats):
    sub.add_argument("--task", help="task or mixture name (default: gin's DataConfig.task)")
    sub.add_argument("--split", help="split (default: gin's DataConfig.split)")
    user_files.add_arguments(sub)
  show.add_argument("-n", "--num_examples", type=int, default=3, help="examples per task")
  vocab = actions.add_parser("train-vocab", help="train a SentencePiece vocabulary from a task or files")
  vocab.add_argument("--output", required=True, help="path of the .model file to write")
  vocab.add_argument("--vocab_size", type=int, default=8000)
  vocab.add_argument("--model_type", choices=("unigram", "bpe"), default="unigram")
  vocab.add_argument("--input", action="append", default=[],
                     help="JSONL/TSV pair file or glob (repeatable); default: the gin task's split")
  vocab.add_argument("--x_field", default="x")
  vocab.add_argument("--y_field", default="y")
  vocab.add_argument("--task", help="task or mixture whose texts to use (default: gin's DataConfig.task)")
  vocab.add_argument("--split", default="train")
  clean = actions.add_parser("decontaminate", help="drop pairs that duplicate evaluation texts")
  clean.add_argument("--input", action="append", required=True,
                     help="JSONL pair file or glob (repeatable); each file is written to --out under its name")
  clean.add_argument("--against", default="../shared/datasets", help="the evaluation data folder")
  clean.add_argument("--out", required=True, help="folder for the kept pairs and decontamination.json")
  clean.add_argument("--x_field", default="x")
  clean.add_argument("--y_field", default="y")
  clean.add_argument("--negatives_field", action="append", default=[])
  clean.add_argument("--ngram", type=int, default=8, help="words per n-gram of the near-duplicate test")
  clean.add_argument("--threshold", type=float, default=0.8,
                     help="n-gram containment (either way) at which a text is a near duplicate")


def _configure(args: argparse.Namespace) -> None:
  # Register every configurable a data gin file may bind before parsing it.
  from embed_jax.data import pipeline, sentencepiece_training  # pylint: disable=import-outside-toplevel,unused-import
  gin_config.parse(args.gin_files, args.gin_bindings)
  if args.action in ("show", "stats"):
    user_files.apply(args)


def _config(args: argparse.Namespace):
  from embed_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  overrides = {k: getattr(args, k) for k in ("task", "split") if getattr(args, k, None)}
  try:
    config = pipeline.DataConfig(**overrides)
  except TypeError as e:
    raise gin_config.GinConfigError(
        "no task: set DataConfig.task in a gin file (e.g. --gin_file=data/stdlib_code.gin) "
        f"or pass --task ({str(e).splitlines()[0]})") from None
  return config


def _show(args: argparse.Namespace) -> int:
  from embed_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  config = _config(args)
  for task, rate in pipeline.tasks_and_rates(config.task):
    encoder = task.output_features["x"].vocabulary.encoder
    print(f"== {task.name}[{config.split}] (rate {rate:g}); {encoder.describe()}")
    print(f"   x_length={config.x_length}, y_length={config.y_length}, num_negatives={config.num_negatives}")
    examples = pipeline.converted_dataset(task, config).take(args.num_examples)
    for i, ex in enumerate(examples.as_numpy_iterator()):
      print(f"-- #{i}")
      _print_text("x", encoder, ex["x_tokens"], ex["x_mask"], ex["x_truncated"])
      _print_text("y", encoder, ex["y_tokens"], ex["y_mask"], ex["y_truncated"])
      for h in range(config.num_negatives):
        if ex["neg_mask"][h].any():
          _print_text(f"negative {h}", encoder, ex["neg_tokens"][h], ex["neg_mask"][h], 0)
  return 0


def _print_text(label: str, encoder, tokens: np.ndarray, mask: np.ndarray, truncated) -> None:
  ids = tokens[mask == 1]
  cut = ", truncated" if truncated else ""
  text = encoder.decode(ids)
  print(f"   {label} ({len(ids)} tokens{cut}):")
  print(textwrap.indent(text, "      "))


def _percentiles(lengths: np.ndarray) -> str:
  parts = [f"p{p}={int(np.percentile(lengths, p))}" for p in PERCENTILES]
  return " ".join(parts + [f"max={int(lengths.max())}", f"mean={lengths.mean():.1f}"])


def _stats(args: argparse.Namespace) -> int:
  from embed_jax.data import document_tasks, pipeline  # pylint: disable=import-outside-toplevel
  from embed_jax.data.sources import PairFileDataSource  # pylint: disable=import-outside-toplevel
  config = _config(args)
  print(f"task {config.task} split {config.split}: x_length={config.x_length}, y_length={config.y_length}")
  for task, rate in pipeline.tasks_and_rates(config.task):
    lengths = {"x": [], "y": [], "negatives": []}
    negative_counts = []
    document_tasks.reset_counts(task.name)
    ds = task.get_dataset(None, split=config.split, shuffle=False, trim_output_features=False)
    for ex in ds.as_numpy_iterator():
      lengths["x"].append(len(ex["x"]))
      lengths["y"].append(len(ex["y"]))
      lengths["negatives"].extend(len(n) for n in ex["negatives"])
      negative_counts.append(len(ex["negatives"]))
    print(f"{task.name} (rate {rate:g}): {len(lengths['x'])} examples, "
          f"{sum(negative_counts)} negatives ({max(negative_counts, default=0)} at most per example)")
    made = document_tasks.counts(task.name)
    if made["documents"]:
      print(f"  from {made['documents']} documents: {made['too_short']} too short, "
            f"{made['without_pairs']} without a pair, {made['pairs']} pairs"
            + (f", {made['decontaminated']} dropped as evaluation duplicates" if made["decontaminated"] else ""))
    if isinstance(task.source, PairFileDataSource) and not task.source.streaming:
      skipped = task.source.records(config.split).skipped
      if skipped:
        print(f"  skipped {len(skipped)} bad lines or empty files (skip_bad_examples=True)")
      report = task.source.decontamination_report(config.split)
      if report is not None:
        print(f"  decontamination: {report.line()}")
    for side, limit in (("x", config.x_length), ("y", config.y_length), ("negatives", config.y_length)):
      side_lengths = np.asarray(lengths[side])
      if side_lengths.size:
        cut = int((side_lengths > limit).sum())
        print(f"  {side:9s} tokens (delimiters included): {_percentiles(side_lengths)}; "
              f"truncated at {limit}: {cut} ({100.0 * cut / side_lengths.size:.1f}%)")
  return 0


def _train_vocab(args: argparse.Namespace) -> int:
  from embed_jax import tokenization  # pylint: disable=import-outside-toplevel
  from embed_jax.data import pair_files, pipeline, sentencepiece_training  # pylint: disable=import-outside-toplevel
  if args.input:
    records = pair_files.read_pairs(args.input, pair_files.PairFields(args.x_field, args.y_field))
    texts = records.x + records.y
  else:
    config = _config(args)
    texts = []
    for task, _ in pipeline.tasks_and_rates(config.task):
      for ex in task.source.get_dataset(split=config.split, shuffle=False).as_numpy_iterator():
        texts += [ex["x"].decode("utf-8"), ex["y"].decode("utf-8")]
  path = sentencepiece_training.train_sentencepiece(
      texts, args.output, vocab_size=args.vocab_size, model_type=args.model_type)
  encoder = tokenization.TextEncoder(tokenization.SentencePieceTokenizer(path))
  print(f"wrote {path} from {len(texts)} texts: {encoder.describe()}")
  return 0


def _decontaminate(args: argparse.Namespace) -> int:
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from embed_jax.data import decontamination, pair_files  # pylint: disable=import-outside-toplevel
  found = decontamination.decontaminator(args.against, args.ngram, args.threshold)
  if found is None:
    raise pair_files.BadInputError(args.against, None, "no such evaluation data folder")
  checker, missing = found
  files = pair_files.expand_patterns(args.input)
  os.makedirs(args.out, exist_ok=True)
  fields = [args.x_field, args.y_field] + list(args.negatives_field)
  report = {}
  for path in files:
    with open(path, encoding="utf-8") as f:
      records = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    texts = []
    for n, line in records:
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise pair_files.BadInputError(path, n, f"malformed JSON ({e.msg} at column {e.colno})") from None
      value = lambda f: record.get(f) if isinstance(record, dict) else None  # noqa: E731
      texts.append([t for f in fields for t in ([value(f)] if isinstance(value(f), str) else value(f) or [])
                    if isinstance(t, str)])
    keep, file_report = decontamination.filter_pairs(texts, checker, missing)
    target = os.path.join(args.out, os.path.basename(path))
    if os.path.abspath(target) == os.path.abspath(path):
      raise pair_files.BadInputError(target, None, "--out would overwrite the input")
    with open(target, "w", encoding="utf-8") as f:
      f.writelines(records[i][1] if records[i][1].endswith("\n") else records[i][1] + "\n" for i in keep)
    print(f"{path} -> {target}: {file_report.line()}")
    report[path] = file_report.as_dict()
  with open(os.path.join(args.out, "decontamination.json"), "w", encoding="utf-8") as f:
    json.dump({"against": os.path.abspath(args.against), "ngram": args.ngram, "threshold": args.threshold,
               "files": report, **_totals(report)}, f, indent=1)
  return 0


def _totals(report: dict) -> dict:
  dropped = {}
  for r in report.values():
    for k, v in r["dropped_per_eval_set"].items():
      dropped[k] = dropped.get(k, 0) + v
  first = next(iter(report.values()), {})
  return {"kept": sum(r["kept"] for r in report.values()), "dropped": sum(dropped.values()),
          "dropped_per_eval_set": dropped, "missing_eval_sets": first.get("missing_eval_sets", [])}


def run(args: argparse.Namespace) -> int:
  from embed_jax import tokenization  # pylint: disable=import-outside-toplevel
  from embed_jax.data import pair_files  # pylint: disable=import-outside-toplevel
  _configure(args)
  try:
    return {"show": _show, "stats": _stats, "train-vocab": _train_vocab,
            "decontaminate": _decontaminate}[args.action](args)
  except (pair_files.BadInputError, tokenization.TokenizationError) as e:
    print(f"embed-jax data {args.action}: error: {e}", file=sys.stderr)
    return 1
