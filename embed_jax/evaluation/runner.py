"""Running a list of evaluation tasks with one model and writing the report."""

from __future__ import annotations

import datetime
import logging
import platform
import time
from collections.abc import Callable, Sequence

from jax.sharding import Mesh

from embed_jax.evaluation import model_embed, report, tasks as tasks_lib
from embed_jax.evaluation.retrieval import EmbedFn

log = logging.getLogger(__name__)


def model_embed_fn(model, mesh: Mesh | None, batch_size: int = 128, max_length: int | None = None,
                   dim: int | None = None) -> Callable[[str], EmbedFn]:
  """label -> embed(texts, side) through `model_embed.embed` with a labelled progress bar.

  `max_length` None is the model's recorded length; `dim` truncates (Matryoshka).
  """
  model_embed.check_dim(dim, model_embed.embedding_size(model))

  def for_task(label: str) -> EmbedFn:
    def embed(texts: Sequence[str], side: str):
      return model_embed.embed(model, texts, side, mesh=mesh, batch_size=batch_size,
                               max_length=max_length, dim=dim,
                               progress=f"{label} ({side}, {len(texts)} texts)")
    return embed
  return for_task


def run_tasks(embed_for: Callable[[str], EmbedFn], task_names: Sequence[str], data_dir: str,
              out_dir: str | None = None, mesh: Mesh | None = None, limit: int | None = None,
              info: dict | None = None, split: str = "test") -> dict:
  """Runs each task (all are resolved first, so a typo fails before any work) and writes the report.

  `split` ("test" or "dev") is the STS file and BEIR qrels each such task reads.
  Returns {task name: result dict}; also writes results.json, report.md and
  plots into `out_dir` when given.
  """
  chosen = [tasks_lib.get_task(name, data_dir, split) for name in task_names]
  results, started = {}, time.time()
  for task in chosen:
    t0 = time.time()
    result = task.run(embed_for(task.name), data_dir, mesh, limit)
    result.update(kind=task.kind, headline=task.headline, seconds=round(time.time() - t0, 1))
    results[task.name] = result
    log.info("%s: %s", task.name, report.headline_scores(result))
    if out_dir is not None:  # After every task, so a long run keeps what it finished.
      run_info = {"date": datetime.date.today().isoformat(), "machine": platform.platform(),
                  "seconds": round(time.time() - started, 1), **(info or {})}
      if limit is not None:
        run_info["limit"] = limit
      report.write_report(results, out_dir, run_info)
  return results
