"""Writing evaluation results: results.json, report.md (a table), and PNG plots.

`results` maps task name -> that task's result dict, which carries `kind` and
`headline` (the metric the report leads with); retrieval and code-search tasks
hold `model` and `bm25` metric dicts and `recall_curve`s, the others their
metrics at the top level. Metrics are stored as fractions and shown x100.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from etils import epath

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
SCORES_PLOT = "scores.png"
RECALL_PLOT = "recall_at_k.png"
SHARED_EMBEDDING_NOTE = 0.01  # = retrieval.DUPLICATE_WARNING_SHARE (not imported: no jax here)


def headline_scores(result: Mapping[str, Any]) -> dict[str, float]:
  """{system: headline metric} of one task: {'model': x} or {'model': x, 'bm25': y}."""
  metric = result["headline"]
  if "model" in result:
    return {name: result[name][metric] for name in ("model", "bm25") if name in result}
  return {"model": result[metric]}


def _metric_columns(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
  if "model" in result:
    return {name: result[name] for name in ("model", "bm25") if name in result}
  return {"model": {result["headline"]: result[result["headline"]]}}


def probe_average(results: Mapping[str, Mapping[str, Any]]) -> float | None:
  """Mean accuracy over the linear-probe tasks present, or None."""
  accuracies = [r["accuracy"] for r in results.values() if r.get("kind") == "probe"]
  return sum(accuracies) / len(accuracies) if accuracies else None


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """One row per task and system: task, kind, system, then each metric x100."""
  lines = ["| task | kind | system | metrics (x100) |", "|---|---|---|---|"]
  for task, result in results.items():
    for system, values in _metric_columns(result).items():
      shown = ", ".join(f"{k} {100 * v:.2f}" for k, v in values.items())
      lines.append(f"| {task} | {result['kind']} | {system} | {shown} |")
  average = probe_average(results)
  if average is not None:
    lines.append(f"| probe average | probe | model | accuracy {100 * average:.2f} |")
  return "\n".join(lines)


def notes(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """One line per task with queries left out of its averages or a corpus of shared embeddings."""
  lines = []
  for task, result in results.items():
    skipped = result.get("num_skipped_queries", 0)
    if skipped:
      lines.append(f"{task}: {skipped} queries skipped (no relevant document in the judgements); "
                   f"metrics average over the other {result['num_queries']}")
    share = result.get("shared_embedding_share", 0.0)
    if share > SHARED_EMBEDDING_NOTE:
      lines.append(f"{task}: {100 * share:.1f}% of the documents share an identical embedding "
                   "with another one (tied documents rank worst first)")
  return lines


def plot_scores(results: Mapping[str, Mapping[str, Any]], path: str) -> None:
  """Bar chart of each task's headline metric, the model beside BM25 where it was run."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  tasks = list(results)
  fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(tasks) + 1), 3.6))
  width = 0.38
  for offset, system in ((-width / 2, "model"), (width / 2, "bm25")):
    xs, heights = [], []
    for i, task in enumerate(tasks):
      scores = headline_scores(results[task])
      if system in scores:
        xs.append(i + (offset if "bm25" in scores else 0))
        heights.append(100 * scores[system])
    if xs:
      bars = ax.bar(xs, heights, width, label=system)
      ax.bar_label(bars, fmt="%.1f", fontsize=7)
  ax.set_xticks(range(len(tasks)),
                [f"{t}\n{results[t]['headline']}" for t in tasks], fontsize=8)
  ax.set_ylabel("score (x100)")
  ax.set_title("headline metric per task")
  ax.legend(fontsize=8)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:  # A bucket path too.
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)


def plot_recall_curves(results: Mapping[str, Mapping[str, Any]], path: str) -> bool:
  """Recall@k against k (log scale) for each retrieval task; False when there is none."""
  curves = {t: r["recall_curve"] for t, r in results.items() if "recall_curve" in r}
  if not curves:
    return False
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for i, (task, systems) in enumerate(curves.items()):
    color = f"C{i}"
    for system, curve in systems.items():
      ks = [int(name.split("@")[1]) for name in curve]
      ax.plot(ks, [100 * v for v in curve.values()], color=color, marker="o", markersize=3,
              linestyle="-" if system == "model" else "--", label=f"{task} ({system})")
  ax.set_xscale("log")
  ax.set_xlabel("k")
  ax.set_ylabel("recall@k (x100)")
  ax.set_title("recall@k (solid: model, dashed: BM25)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:  # A bucket path too.
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)
  return True


def write_report(results: Mapping[str, Mapping[str, Any]], out_dir: str,
                 info: Mapping[str, Any] | None = None) -> dict[str, str]:
  """Writes results.json, report.md and the plots into `out_dir`; returns {kind: path}."""
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  paths = {"results": os.path.join(out_dir, RESULTS_FILE), "report": os.path.join(out_dir, REPORT_FILE),
           "scores_plot": os.path.join(out_dir, SCORES_PLOT)}
  record = dict(results)
  if info:
    record["_run"] = dict(info)
  with epath.Path(paths["results"]).open("w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  plot_scores(results, paths["scores_plot"])
  lines = ["# Evaluation report", ""]
  lines += [f"- {k}: {v}" for k, v in (info or {}).items()]
  lines += ["", markdown_table(results), ""]
  lines += [f"- {note}" for note in notes(results)] + ([""] if notes(results) else [])
  lines += [f"![headline metric per task]({SCORES_PLOT})"]
  recall_path = os.path.join(out_dir, RECALL_PLOT)
  if plot_recall_curves(results, recall_path):
    paths["recall_plot"] = recall_path
    lines.append(f"![recall@k]({RECALL_PLOT})")
  with epath.Path(paths["report"]).open("w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return paths
