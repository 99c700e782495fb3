"""What a run directory records about its configuration, and which changes a resume accepts.

    model_dir/config.gin      gin's operative config of the run (every parameter of every
                              configurable it called, defaults included), as T5X writes it
    model_dir/results.json    the run's summary at the end: step, final loss, final evaluation

Each checkpoint also records the run's explicit bindings (`gin.config_str()`:
the files and overrides the user gave). A resume compares them with the new
run's: a change of a binding in `SAFE_TO_CHANGE` (length, learning rate,
cadence of logs, evaluations and checkpoints, the mesh, GradCache chunks,
packing, compute dtype) is reported and accepted; any
other change (the model, the data, the batch, the loss) is refused before
anything is touched, unless `train.allow_config_changes` says otherwise.
LoRA's settings (`train.lora_*`) shape the checkpoint's adapters: checkpoints
record them and a resume with others is refused even then
(`train.trainable.check_resume`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import gin
from etils import epath
from gin import config_parser

from embed_jax.errors import UserError

CONFIG_FILE = "config.gin"
RESULTS_FILE = "results.json"

# Bindings (selector.parameter, or a prefix ending in '.' or '_') a resume may change.
SAFE_TO_CHANGE = (
    "train.steps", "train.checkpoint_every", "train.keep", "train.log_every", "train.eval_",
    "train.compare_bm25", "train.progress", "train.tensorboard", "train.async_checkpoints",
    "train.export_sentence_transformers", "train.max_consecutive_nonfinite",
    "train.allow_config_changes", "train.start_over", "train.stop_check_every",
    "train.strict_data", "train.prefetch", "train.compute_dtype", "learning_rate_schedule.",
    "make_optimizer.clip_norm", "make_optimizer.weight_decay",
    # Where and how the same computation runs: a checkpoint restores onto any mesh, and
    # GradCache and packing compute the direct, padded step's loss and gradients.
    "create_mesh.", "logical_axis_rules.", "StepConfig.grad_cache_chunks", "StepConfig.pack",
)


class ConfigChangeError(UserError):
  """A resume with a changed configuration that cannot (or may not) continue the run."""


class _Literal(config_parser.ParserDelegate):
  """Keeps references and macros as their source text."""

  def configurable_reference(self, scoped_name: str, evaluate: bool) -> str:
    return f"@{scoped_name}{'()' if evaluate else ''}"

  def macro(self, name: str) -> str:
    return f"%{name}"


def parse_bindings(text: str) -> dict[str, Any]:
  """`scope/selector.parameter` -> value of every binding in gin text (includes and imports skipped)."""
  bindings = {}
  for statement in config_parser.ConfigParser(io.StringIO(text), _Literal()):
    if isinstance(statement, config_parser.BindingStatement):
      selector = f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector
      name = f"{selector}.{statement.arg_name}" if statement.arg_name else selector
      bindings[name] = statement.value
  return bindings


def explicit_bindings() -> str:
  """The bindings the user gave (files and overrides), as gin text."""
  return gin.config_str()


def changed_bindings(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """name -> (old value, new value) of every binding that differs (absent = '<unset>')."""
  unset = "<unset>"
  return {k: (old.get(k, unset), new.get(k, unset)) for k in sorted(set(old) | set(new))
          if old.get(k, unset) != new.get(k, unset)}


def _is_safe(name: str) -> bool:
  short = name.split("/")[-1]
  short = ".".join(short.split(".")[-2:])  # module.path.train.steps -> train.steps
  return any(short == s or (s[-1] in "._" and short.startswith(s)) for s in SAFE_TO_CHANGE)


def split_changes(changes: Mapping[str, tuple[Any, Any]]) -> tuple[list[str], list[str]]:
  """(safe, other): the changed bindings as 'name: old -> new' lines, by whether a resume accepts them."""
  safe, other = [], []
  for name, (old, new) in changes.items():
    (safe if _is_safe(name) else other).append(f"{name}: {old!r} -> {new!r}")
  return safe, other


def write_config(model_dir: epath.PathLike, text: str) -> None:
  """Writes `config.gin` (gin's operative config) into the run directory."""
  epath.Path(model_dir).joinpath(CONFIG_FILE).write_text(text)


def write_results(model_dir: epath.PathLike, results: Mapping[str, Any]) -> None:
  """Writes `results.json` (JSON-able values only) into the run directory."""
  epath.Path(model_dir).joinpath(RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
