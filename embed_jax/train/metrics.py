"""Training metrics: console progress, TensorBoard events and `metrics.jsonl`, process 0 only.

Every record is one JSON line `{"step": s, "split": "train"|"eval", ...scalars}`
in `model_dir/metrics.jsonl`, the same scalars as TensorBoard scalars
`split/name` under `model_dir/tensorboard`. A run that resumes from the
checkpoint of step s first drops the records after s (the killed run got
further than its last checkpoint; those steps are done again) and TensorBoard
purges its events after s, so the files read as one uninterrupted run.

In a bucket (gs://), where objects cannot be appended to, metrics.jsonl is
rewritten whole at each record (a single object write is atomic there).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import jax
from etils import epath

from embed_jax import paths

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CONSOLE_KEYS = ("loss", "accuracy", "temperature", "pairs_per_s")


def to_python(metrics: dict[str, Any]) -> dict[str, float]:
  """Scalars (jax/numpy) -> Python floats/ints, for JSON."""
  out = {}
  for k, v in metrics.items():
    v = jax.device_get(v)
    out[k] = int(v) if getattr(v, "dtype", None) is not None and v.dtype.kind in "iu" else float(v)
  return out


class MetricsWriter:
  """Writes metrics of a run; silent on processes other than 0.

  Args:
    model_dir: where metrics.jsonl and tensorboard/ go.
    total_steps: the run's length (progress bar and ETA).
    start_step: the step the run (re)starts at.
    progress: show a tqdm progress bar (else a line per logged step).
    tensorboard: write TensorBoard event files (tensorboardX).
  """

  def __init__(self, model_dir: str | epath.Path, total_steps: int, start_step: int = 0,
               progress: bool = True, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.directory = paths.path(model_dir)
    self.total_steps = total_steps
    self._bar = self._tb = self._file = None
    if not self.enabled:
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    truncate_records(self.directory / METRICS_FILE, start_step)
    self._lines = None  # In a bucket: every line of the file, rewritten whole at each write.
    if paths.is_cloud(self.directory):
      path = self.directory / METRICS_FILE
      self._lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    else:
      self._file = open(self.directory / METRICS_FILE, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(str(self.directory / TENSORBOARD_DIR),
                               purge_step=start_step + 1 if start_step else None)
    if progress:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                       dynamic_ncols=True)
    self._last_step = start_step

  def write(self, step: int, metrics: dict[str, Any], split: str = "train") -> None:
    """Records scalars for `step` (the number of steps done)."""
    if not self.enabled:
      return
    values = to_python(metrics)
    line = json.dumps({"step": step, "split": split, **values}) + "\n"
    if self._lines is not None:
      self._lines.append(line)
      (self.directory / METRICS_FILE).write_text("".join(self._lines))
    else:
      self._file.write(line)
      self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        if math.isfinite(v):
          self._tb.add_scalar(f"{split}/{k}", v, step)
    shown = ", ".join(f"{k}={values[k]:.4g}" for k in CONSOLE_KEYS if k in values)
    if split != "train":
      shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    if self._bar is not None:
      if split == "train":
        self._bar.update(step - self._last_step)
        self._last_step = step
        self._bar.set_postfix_str(shown)
      else:
        self._bar.write(f"[{split} @ step {step}] {shown}")
    else:
      print(f"[{split} @ step {step}/{self.total_steps}] {shown}", flush=True)

  def print(self, message: str) -> None:
    """A message on the console (process 0), above the progress bar."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message, flush=True)

  def close(self) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._file is not None:
      self._file.close()


def read_records(path) -> list[dict[str, Any]]:
  """The records of a metrics file in order (a line cut by a kill is skipped; absent: [])."""
  path = paths.path(path)
  if not path.exists():
    return []
  records = []
  with path.open("r", encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records


def truncate_records(path: epath.Path, last_step: int) -> None:
  """Drops the records of steps after `last_step` from a metrics file (atomically; absent: no-op).

  At step 0 (a fresh start) every train record goes; evaluations at step 0 stay.
  """
  path = paths.path(path)
  if not path.exists():
    return
  kept = []
  for record in read_records(path):
    step = record.get("step", 0)
    if step < last_step or (step == last_step and (step or record.get("split") != "train")):
      kept.append(json.dumps(record) + "\n")
  if paths.is_cloud(path):
    path.write_text("".join(kept))  # One object write: atomic, and buckets cannot rename.
    return
  temporary = path.with_suffix(".jsonl.tmp")
  temporary.write_text("".join(kept), encoding="utf-8")
  temporary.replace(path)


class Throughput:
  """Pairs per second over the steps since the last call."""

  def __init__(self):
    self._time = time.perf_counter()

  def pairs_per_second(self, pairs: int) -> float:
    now = time.perf_counter()
    rate = pairs / max(now - self._time, 1e-9)
    self._time = now
    return rate
