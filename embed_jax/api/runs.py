"""`embed_jax.train` and `embed_jax.evaluate`: a training run and an evaluation from Python.

    summary = embed_jax.train(gin_files=["runs/quickstart.gin"], model_dir="runs/a",
                              overrides={"train.steps": 100, "DataConfig.batch_size": 64})
    results = embed_jax.evaluate(embed_jax.load("runs/a"), tasks=["stdlib_code"])

`train` is `embed-jax train` in this process: the same gin files (looked up as
given, then in configs/), overrides and run directory, resumed when it holds a
checkpoint. Gin's global config is cleared before and after each call, so runs
in one process (a notebook) do not leak settings into each other.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from embed_jax.api.model import ApiError, Model, load
from embed_jax.errors import UserError

# Modules whose gin configurables a run may call: imported before the config is parsed
# and locked (a configurable registered after that is an error).
_CONFIGURABLE_MODULES = (
    "embed_jax.train.trainer", "embed_jax.train.updater", "embed_jax.train.optimizer",
    "embed_jax.train.objective", "embed_jax.train.synthetic", "embed_jax.data.stdlib_corpus",
)


def gin_bindings(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
  """`NAME=VALUE` gin bindings: a mapping's Python values written as gin literals, strings kept.

  A mapping {"train.steps": 10, "DataConfig.task": "stdlib_code"} gives
  ["train.steps=10", "DataConfig.task='stdlib_code'"]; a sequence of
  "NAME=VALUE" strings (as after `--gin.`) is taken as it is, so references
  (`@name()`) and macros (`%NAME`) go that way.
  """
  if overrides is None:
    return []
  if isinstance(overrides, str):
    raise ApiError("overrides: give a dict {name: value} or a list of 'NAME=VALUE' strings, "
                   f"not the string {overrides!r}")
  if isinstance(overrides, Mapping):
    out = []
    for name, value in overrides.items():
      if not isinstance(name, str) or "=" in name or not name.strip():
        raise ApiError(f"overrides: {name!r} is not a gin binding name such as 'train.steps'")
      out.append(f"{name}={value!r}")
    return out
  return [str(b) for b in overrides]


def train(gin_files: Sequence[str] = (), overrides: Mapping[str, Any] | Sequence[str] | None = None,
          *, model_dir: str | os.PathLike, train_files: Sequence[str] | str | None = None,
          validation_files: Sequence[str] | str | None = None, x_field: str = "x",
          y_field: str = "y", negatives_field: Sequence[str] = ()) -> dict[str, Any]:
  """Trains (or resumes) the run in `model_dir`; returns its summary.

  Args:
    gin_files: gin files, e.g. ["runs/quickstart.gin"] (also found under configs/).
    overrides: gin bindings applied after the files (see `gin_bindings`).
    model_dir: the run directory (checkpoints, metrics.jsonl, config.gin,
      results.json, the final model in `final/`).
    train_files, validation_files: JSONL/TSV pair files or globs, as
      `embed-jax train --train_files` (fields `x_field`, `y_field`, `negatives_field`).

  Returns:
    results.json's content when the run finished (step, start_step, final_loss,
    final_model, final_eval, wall_s, ...) plus "model_dir", "stopped_by" and
    "compiled_shapes"; after a signal, the step it stopped at.
  """
  import importlib  # pylint: disable=import-outside-toplevel
  import gin  # pylint: disable=import-outside-toplevel
  from embed_jax import gin_config  # pylint: disable=import-outside-toplevel
  from embed_jax.cli import user_files  # pylint: disable=import-outside-toplevel
  from embed_jax.train import run_config  # pylint: disable=import-outside-toplevel
  if isinstance(gin_files, str):
    gin_files = [gin_files]
  for name in _CONFIGURABLE_MODULES:
    importlib.import_module(name)
  files = {"train": train_files, "validation": validation_files}
  files = {k: [v] if isinstance(v, str) else list(v or ()) for k, v in files.items()}
  gin.clear_config(clear_constants=True)
  try:
    gin_config.parse(list(gin_files), gin_bindings(overrides), finalize=False)
    if _data_source() == "pipeline" or files["train"]:
      importlib.import_module("embed_jax.data.pipeline")  # The tensorflow side, only when used.
    user_files.apply(argparse.Namespace(
        train_files=files["train"], validation_files=files["validation"], test_files=[],
        x_field=x_field, y_field=y_field, negatives_field=list(negatives_field)))
    gin.finalize()
    from embed_jax.train import trainer  # pylint: disable=import-outside-toplevel
    summary = trainer.train(os.fspath(model_dir))
  finally:
    gin.clear_config(clear_constants=True)
  out: dict[str, Any] = {"model_dir": os.fspath(model_dir)}
  results_path = os.path.join(os.fspath(model_dir), run_config.RESULTS_FILE)
  if summary["stopped_by"] is None and os.path.isfile(results_path):
    with open(results_path, encoding="utf-8") as f:
      out.update(json.load(f))
  else:
    out["step"] = summary["step"]
  out.update(stopped_by=summary["stopped_by"], compiled_shapes=summary.get("compiled_shapes"))
  return out


def _data_source() -> str:
  import gin  # pylint: disable=import-outside-toplevel
  try:
    return gin.query_parameter("train.data_source")
  except ValueError:
    return "pipeline"  # train's default.


def evaluate(model: Model | str | os.PathLike, tasks: Sequence[str] | str, *,
             data_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
             limit: int | None = None, batch_size: int = 128, max_length: int | None = None,
             dim: int | None = None, split: str = "test") -> dict[str, Any]:
  """Scores `model` on evaluation tasks, as `embed-jax eval`; returns {task: results}.

  Args:
    model: a `Model` (from `load`) or anything `load` accepts.
    tasks: task names (see `embed-jax eval`): probes (mr, cr, subj, mpqa, sst2,
      trec, mrpc), stsb, cosqa, stdlib_code (built in, needs no files) or a
      BEIR folder under `data_dir` (e.g. scifact).
    data_dir: the folder holding the data sets (laid out as ../shared/datasets).
    out_dir: also write results.json, report.md and plots there.
    limit: at most this many examples per split (queries for retrieval): smoke runs.
    max_length: tokens per text; default the model's `max_length`.
    dim: score the first `dim` dimensions, re-normalised (Matryoshka).
    split: "test" or "dev": the STS file and BEIR qrels the tasks read.

  Returns:
    {task name: {"model": {metric: value}, "bm25": {...}, ...}} as in
    results.json: retrieval and code-search tasks score BM25 beside the model.
  """
  from embed_jax.evaluation import runner, tasks as tasks_lib  # pylint: disable=import-outside-toplevel
  if not isinstance(model, Model):
    model = load(model)
  names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
  if not names:
    raise ApiError("evaluate: tasks is empty")
  data_dir = os.fspath(data_dir) if data_dir is not None else os.curdir
  try:
    for name in names:
      tasks_lib.get_task(name, data_dir, split)
  except ValueError as e:
    if isinstance(e, UserError):
      raise
    raise ApiError(f"evaluate: {e}") from None
  embed_for = runner.model_embed_fn(model.loaded, model.mesh, batch_size,
                                    max_length or model.max_length, dim)
  return runner.run_tasks(embed_for, names, data_dir,
                          os.fspath(out_dir) if out_dir is not None else None, model.mesh, limit,
                          info={"model": str(model.directory), "dim": dim,
                                "max_length": max_length or model.max_length}, split=split)
