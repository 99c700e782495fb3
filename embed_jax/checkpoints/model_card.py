"""Model cards: the README.md of an exported sentence-transformers folder.

As sentence-transformers writes one, the card says what the model is and how
it was made: the base model, the architecture and pooling, the training data
tasks, the objective and its settings, steps and batch, the run's evaluation
table and how to use it with sentence-transformers and with `embed_jax.load`.
The training facts come from the run directory the model was written in
(`config.gin`, the operative config, and `results.json`), when there is one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from etils import epath

CARD_FILE = "README.md"
# Settings of these configurables (selector prefixes) appear under "Training".
_DATA_SELECTORS = ("DataConfig.", "SyntheticPairs.", "file_task.", "mixture.")
_OBJECTIVE_SELECTORS = ("ContrastiveObjective.", "contrastive_loss.")
_OPTIMIZER_SELECTORS = ("learning_rate_schedule.", "make_optimizer.", "StepConfig.")
_RUN_KEYS = ("train.steps", "train.init_from", "train.seed", "train.compute_dtype",
             "train.guide_model", "train.data_source")


def run_dir_of(model_directory: epath.PathLike) -> epath.Path | None:
  """The run directory a model directory was written in (`RUN/final`), or None."""
  from embed_jax.train import run_config  # pylint: disable=import-outside-toplevel
  parent = epath.Path(model_directory).parent
  return parent if (parent / run_config.CONFIG_FILE).is_file() else None


def read_run(run_dir: epath.PathLike | None) -> tuple[dict[str, Any], dict[str, Any]]:
  """(bindings of config.gin, results.json) of a run directory; empty where absent."""
  from embed_jax.train import run_config  # pylint: disable=import-outside-toplevel
  if run_dir is None:
    return {}, {}
  run_dir = epath.Path(run_dir)
  bindings, results = {}, {}
  if (run_dir / run_config.CONFIG_FILE).is_file():
    bindings = run_config.parse_bindings((run_dir / run_config.CONFIG_FILE).read_text())
  if (run_dir / run_config.RESULTS_FILE).is_file():
    results = json.loads((run_dir / run_config.RESULTS_FILE).read_text())
  return bindings, results


def _short(name: str) -> str:
  """`scope/module.path.Selector.param` -> `Selector.param`."""
  return ".".join(name.split("/")[-1].split(".")[-2:])


def _settings(bindings: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
  """The bindings whose short name starts with one of `prefixes`, unset (None) ones left out."""
  return {_short(k): v for k, v in sorted(bindings.items())
          if _short(k).startswith(prefixes) and v is not None}


def _setting(value: Any) -> str:
  """A gin value as a table cell: strings quoted, others as Python writes them."""
  return f"`{value!r}`" if isinstance(value, str) else str(value).replace("|", "\\|")


def _value(value: Any) -> str:
  """A measured number as a table cell (4 decimals)."""
  if isinstance(value, float):
    return f"{value:.4f}" if math.isfinite(value) and abs(value) >= 1e-3 else f"{value:.4g}"
  return _setting(value)


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return lines


EVALUATIONS = (("before training", "initial_eval"), ("after training", "final_eval"),
               ("BM25", "bm25_eval"))


def evaluation_table(results: Mapping[str, Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
  """(header, rows): each metric of the run's evaluations (results.json) before/after training
  and BM25's, the columns the run measured."""
  columns = [(label, results[key]) for label, key in EVALUATIONS if results.get(key)]
  metrics = []
  for _, values in columns:
    metrics += [m for m in values if m not in metrics]
  rows = [(m, *("" if values.get(m) is None else _value(values[m]) for _, values in columns))
          for m in metrics]
  return ("metric", *(label for label, _ in columns)), rows


def model_card(loaded: Any, folder: epath.PathLike, side: str, *, run_dir: epath.PathLike | None,
               results: Mapping[str, Any] | None = None) -> str:
  """The card's markdown for the sentence-transformers folder `folder` exported from `loaded`.

  Args:
    loaded: the exported `model_dir.LoadedModel`.
    folder: the exported folder (named in the usage snippets).
    side: the side the folder embeds ("x" or "y").
    run_dir: the run that trained the model (config.gin, results.json), or None.
    results: the run's results (default: its results.json).
  """
  bindings, stored = read_run(run_dir)
  results = dict(results if results is not None else stored)
  config, encoder, metadata = loaded.config, loaded.config.encoder, loaded.metadata
  run = {_short(k): v for k, v in bindings.items() if _short(k) in _RUN_KEYS}
  base = run.get("train.init_from") or metadata.get("source")
  dim = config.projection_dim or encoder.d_model
  prefix = " ".join(getattr(loaded.text_spec, f"{side}_prefix"))
  suffix = " ".join(getattr(loaded.text_spec, f"{side}_suffix"))
  name = epath.Path(run_dir).name if run_dir is not None else epath.Path(folder).name or "model"
  lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
           "tags:", "- sentence-transformers", "- feature-extraction", "- embed_jax", "---", "",
           f"# {name}", "",
           "A text and code embedding model trained with embed_jax (contrastive pre-training, the "
           "cpt-text / cpt-code recipe: one Transformer embeds both sides of a pair, a symmetric "
           "InfoNCE loss over all in-batch pairs trains it).", "", "## Model", ""]
  lines += _table(("", ""), [
      ("base model", f"`{base}`" if base else "none (trained from scratch)"),
      ("architecture", f"{type(encoder).__name__}: {encoder.num_layers} layers, d_model "
                       f"{encoder.d_model}, {encoder.num_heads} heads, vocabulary {encoder.vocab_size}"),
      ("pooling", f"{config.pooling}{', L2-normalised' if config.normalize else ''}"),
      ("embedding size", dim),
      ("max length", f"{metadata.get('max_length') or encoder.max_length} tokens"),
      ("this folder embeds", f"side {side} ({'queries' if side == 'x' else 'documents'}), "
                             + (f"wrapped as `{prefix} ... {suffix}`" if prefix or suffix
                                else "without delimiters")),
      ("trained steps", metadata.get("trained_steps", results.get("step", ""))),
  ])
  if bindings:
    data = _settings(bindings, _DATA_SELECTORS)
    if run.get("train.data_source") == "synthetic":
      data = {"train.data_source": "synthetic", **{k: v for k, v in data.items()
                                                  if k.startswith("SyntheticPairs.")}}
    else:
      data = {k: v for k, v in data.items() if not k.startswith("SyntheticPairs.")}
    batch = data.get("DataConfig.batch_size", data.get("SyntheticPairs.batch_size"))
    rows = [("steps", results.get("step", run.get("train.steps"))),
            ("global batch", f"{batch} pairs" if batch is not None else "")]
    rows += [(f"`{k}`", _setting(v)) for k, v in data.items()]
    rows += [(f"`{k}`", _setting(v)) for k, v in _settings(bindings, _OBJECTIVE_SELECTORS).items()]
    if "train.objective" in {_short(k) for k in bindings}:
      rows.insert(2, ("objective", _setting(next(v for k, v in bindings.items()
                                                 if _short(k) == "train.objective"))))
    rows += [(f"`{k}`", _setting(v)) for k, v in _settings(bindings, _OPTIMIZER_SELECTORS).items()]
    rows += [(f"`{k}`", _setting(v)) for k, v in sorted(run.items())
             if k not in ("train.steps", "train.data_source") and v is not None]
    if results.get("final_loss") is not None:
      rows.append(("final training loss", _value(results["final_loss"])))
    lines += ["", "## Training", "", "From the run's `config.gin` (gin's operative config):", ""]
    lines += _table(("setting", "value"), rows)
  header, evaluation = evaluation_table(results)
  if evaluation:
    lines += ["", "## Evaluation", "",
              "The run's own evaluation (`results.json`): validation loss/accuracy on held-out "
              "pairs and code search on the stdlib_code test split, as far as the run measured them.",
              ""]
    lines += _table(header, evaluation)
  lines += ["", "## Usage", "", "With sentence-transformers:", "", "```python",
            "from sentence_transformers import SentenceTransformer", "",
            f"model = SentenceTransformer({str(folder)!r})",
            "embeddings = model.encode([\"def add(a, b): return a + b\"], normalize_embeddings=True)",
            "```", "", "With embed_jax (converted once into its cache):", "", "```python",
            "import embed_jax", "", f"model = embed_jax.load({str(folder)!r})",
            f"embeddings = model.embed([\"def add(a, b): return a + b\"], side={side!r})",
            "```", ""]
  return "\n".join(lines)


def write_model_card(loaded: Any, folder: epath.PathLike, side: str, *,
                     run_dir: epath.PathLike | None = None,
                     results: Mapping[str, Any] | None = None) -> epath.Path:
  """Writes `folder/README.md` (see `model_card`); returns its path."""
  path = epath.Path(folder) / CARD_FILE
  path.write_text(model_card(loaded, folder, side, run_dir=run_dir, results=results))
  return path
