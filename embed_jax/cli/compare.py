"""`embed-jax compare`: one row per run directory, the settings that differ beside the results.

    embed-jax compare 'runs/*' [more runs or globs] [--all]
    embed-jax compare 'runs/lr_*' --plot code_search_mrr@10 --by learning_rate [--out plot.png]

Each run directory describes itself (see `train.run_config`): `config.gin`
(gin's operative config), `results.json` (written at the end: steps, final
loss, final evaluation) and `metrics.jsonl`. A row shows the gin bindings
whose values differ between the runs (a binding a run lacks shows as
`<unset>`), the steps, the final training loss and the evaluation metrics: from
results.json, else (a run still going or stopped) the last train and eval
records of metrics.jsonl. `--plot METRIC --by BINDING` draws METRIC (an eval
metric, `loss` or `steps`) against BINDING's value, one point per run, into a
PNG; BINDING may be the tail of a name (`learning_rate` for
`learning_rate_schedule.learning_rate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from etils import epath

from embed_jax.main import CommandLineError

CONFIG_FILE = "config.gin"  # = train.run_config.CONFIG_FILE (not imported: keeps gin parsing lazy)
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
UNSET = "<unset>"
FIXED_COLUMNS = ("steps", "loss")
_GLOB_CHARS = "*?["


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("runs", nargs="+", help="run directories or globs (quote them: 'runs/*')")
  parser.add_argument("--all", action="store_true",
                      help="show every binding, not only those that differ between the runs")
  parser.add_argument("--plot", metavar="METRIC", help="plot this metric (an eval metric, loss or steps)")
  parser.add_argument("--by", metavar="BINDING", help="against this binding (with --plot)")
  parser.add_argument("--out", default="compare.png", help="the PNG --plot writes")


@dataclasses.dataclass
class Run:
  """What one run directory records."""
  path: str
  bindings: dict[str, Any]
  steps: int | None
  loss: float | None
  metrics: dict[str, float]

  @property
  def name(self) -> str:
    return os.path.basename(self.path.rstrip("/")) or self.path

  def value(self, column: str) -> Any:
    """A fixed column (steps, loss) or an eval metric; None when the run lacks it."""
    if column == "steps":
      return self.steps
    if column == "loss":
      return self.loss
    return self.metrics.get(column)


def expand(patterns: Sequence[str]) -> list[str]:
  """Run paths named by `patterns` (globs expanded, local or gs://), in order, each once."""
  paths = []
  for pattern in patterns:
    if not any(c in pattern for c in _GLOB_CHARS):
      matches = [pattern]
    elif "://" in pattern:
      parts = pattern.split("/")
      first = next(i for i, p in enumerate(parts) if any(c in p for c in _GLOB_CHARS))
      matches = sorted(str(p) for p in epath.Path("/".join(parts[:first])).glob("/".join(parts[first:])))
    else:
      matches = sorted(glob.glob(pattern))
    paths += [m for m in matches if m not in paths]
  return paths


def is_run(path: str) -> bool:
  folder = epath.Path(path)
  return folder.is_dir() and any((folder / f).is_file()
                                 for f in (CONFIG_FILE, RESULTS_FILE, METRICS_FILE))


def _records(path: epath.Path) -> list[dict[str, Any]]:
  if not path.is_file():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except ValueError:
      continue  # A line cut by a kill.
  return records


def read_run(path: str) -> Run:
  """Reads a run directory's config.gin, results.json and metrics.jsonl."""
  from embed_jax.train import run_config  # pylint: disable=import-outside-toplevel
  folder = epath.Path(path)
  bindings = {}
  if (folder / CONFIG_FILE).is_file():
    try:
      bindings = run_config.parse_bindings((folder / CONFIG_FILE).read_text())
    except (SyntaxError, ValueError) as e:
      raise CommandLineError(f"{folder / CONFIG_FILE}: not a gin config ({e})") from None
  results = {}
  if (folder / RESULTS_FILE).is_file():
    try:
      results = json.loads((folder / RESULTS_FILE).read_text())
    except ValueError as e:
      raise CommandLineError(f"{folder / RESULTS_FILE}: not valid JSON ({e})") from None
  records = _records(folder / METRICS_FILE)
  train = [r for r in records if r.get("split") == "train"]
  evals = [r for r in records if r.get("split") == "eval"]
  steps = results.get("step", train[-1]["step"] if train else None)
  loss = results.get("final_loss", train[-1].get("loss") if train else None)
  if results.get("final_eval"):
    metrics = dict(results["final_eval"])
  elif evals:
    metrics = {k: v for k, v in evals[-1].items() if k not in ("step", "split")}
  else:
    metrics = {}
  return Run(str(path), bindings, steps, loss, metrics)


def differing(runs: Sequence[Run]) -> list[str]:
  """Names of the bindings whose value is not the same in every run (sorted)."""
  names = sorted({name for run in runs for name in run.bindings})
  return [n for n in names if len({repr(run.bindings.get(n, UNSET)) for run in runs}) > 1]


def metric_names(runs: Sequence[Run]) -> list[str]:
  """Eval metrics any run has, in first-seen order."""
  names = []
  for run in runs:
    names += [m for m in run.metrics if m not in names]
  return names


def table(runs: Sequence[Run], bindings: Sequence[str]) -> tuple[list[str], list[list[str]]]:
  """(header, rows) of the comparison: run, each binding, steps, loss, each eval metric."""
  metrics = metric_names(runs)
  header = ["run", *bindings, *FIXED_COLUMNS, *metrics]
  rows = []
  for run in runs:
    cells = [run.name] + [_show(run.bindings.get(b, UNSET), missing="None") for b in bindings]
    cells += [_show(run.value(c)) for c in (*FIXED_COLUMNS, *metrics)]
    rows.append(cells)
  return header, rows


def _show(value: Any, missing: str = "-") -> str:
  """A cell: `missing` for None (a binding set to None, or a result the run lacks)."""
  if value is None:
    return missing
  if isinstance(value, float):
    return f"{value:.4g}"
  return value if value == UNSET else repr(value) if isinstance(value, str) else str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A plain-text table, columns padded to their widest cell."""
  widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
  lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
           for line in (header, ["-" * w for w in widths], *rows)]
  return "\n".join(lines)


def resolve_binding(name: str, runs: Sequence[Run]) -> str:
  """The binding `name` names: itself, else the one binding ending in `.name` (or `.x.name`)."""
  known = sorted({b for run in runs for b in run.bindings})
  if name in known:
    return name
  tails = [b for b in known if b.endswith("." + name) or b.split("/")[-1] == name]
  if len(tails) == 1:
    return tails[0]
  choices = tails or differing(runs) or known[:20]
  raise CommandLineError(f"--by {name!r}: {'ambiguous' if tails else 'no such binding'} in the "
                         f"runs' config.gin; choose from {', '.join(choices)}")


def plot(runs: Sequence[Run], metric: str, binding: str, out: str) -> list[tuple[Any, float]]:
  """Writes METRIC against BINDING's value as a PNG; returns the (value, metric) points drawn."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  available = [*FIXED_COLUMNS, *metric_names(runs)]
  if metric not in available:
    raise CommandLineError(f"--plot {metric!r}: no run has it; choose from {', '.join(available)}")
  points = [(run.bindings.get(binding, UNSET), run.value(metric), run.name) for run in runs
            if run.value(metric) is not None and math.isfinite(run.value(metric))]
  if not points:
    raise CommandLineError(f"--plot {metric!r}: no run has a value")
  numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _, _ in points)
  fig, ax = plt.subplots(figsize=(6, 4))
  if numeric:
    points.sort(key=lambda p: p[0])
    xs = [p[0] for p in points]
    ax.scatter(xs, [p[1] for p in points])
    distinct = sorted(set(xs))  # Runs sharing a value (e.g. seeds): the line goes through their mean.
    ax.plot(distinct, [sum(p[1] for p in points if p[0] == x) / xs.count(x) for x in distinct])
    if min(xs) > 0 and max(xs) / min(xs) >= 100:
      ax.set_xscale("log")
  else:
    ax.bar(range(len(points)), [p[1] for p in points], tick_label=[_show(p[0]) for p in points])
  for i, (x, y, label) in enumerate(points):
    ax.annotate(label, (x if numeric else i, y), textcoords="offset points", xytext=(4, 4),
                fontsize=8)
  ax.set(xlabel=binding, ylabel=metric, title=f"{metric} by {binding}")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  out_path = epath.Path(out)
  if out_path.parent and not out_path.parent.exists():
    out_path.parent.mkdir(parents=True, exist_ok=True)
  with out_path.open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
  return [(x, float(y)) for x, y, _ in points]


def run(args: argparse.Namespace) -> int:
  for pattern in args.runs:
    if not any(c in pattern for c in _GLOB_CHARS) and not is_run(pattern):
      raise CommandLineError(f"{pattern}: not a run directory (no {CONFIG_FILE}, {RESULTS_FILE} "
                             f"or {METRICS_FILE})")
  paths = expand(args.runs)
  runs = [read_run(p) for p in paths if is_run(p)]
  if not runs:
    raise CommandLineError(f"no run directories match {' '.join(args.runs)}")
  if bool(args.plot) != bool(args.by):
    raise CommandLineError("--plot METRIC and --by BINDING go together")
  shown = sorted({b for r in runs for b in r.bindings}) if args.all else differing(runs)
  print(format_table(*table(runs, shown)))
  if len(runs) > 1 and not shown:
    print("(the runs' configurations are identical)")
  if args.plot:
    points = plot(runs, args.plot, resolve_binding(args.by, runs), args.out)
    print(f"wrote {args.out}: {args.plot} by {args.by} ({len(points)} runs)")
  return 0
