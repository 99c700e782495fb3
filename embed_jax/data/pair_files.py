"""Reading (x, y[, negatives]) pairs from the user's JSONL or TSV files, strictly.

JSONL: one JSON object per line; blank lines are ignored. TSV: a header row
naming the columns, then one pair per row; a TSV field cannot hold a tab or a
newline (use JSONL for such text). Field names are configurable; negatives are
optional and may come from several fields (in JSONL each may hold a string or a
list of strings). An optional teacher-scores field holds a teacher's scores of
the positive and each hard negative, in that order: 1 + (the line's number of
negatives) finite numbers (JSONL: a list; TSV: a JSON list in the column), for
distillation (`ContrastiveObjective.distill`).

Every bad line (malformed JSON, a missing or empty field, bytes that are not
UTF-8, a wrong number of columns) and an empty file raise `BadInputError`
naming the file and line. With `skip_bad_examples=True` (from gin:
`--gin.skip_bad_examples=True`) bad lines and empty files are skipped instead,
counted, and logged as a warning with the first reasons: never dropped silently.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import math
import os
from collections.abc import Sequence

import gin

from embed_jax import paths
from embed_jax.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "tsv")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".tsv": "tsv"}
_REASONS_LOGGED = 5


class BadInputError(UserError):
  """A pair file cannot be read; the message names the file and, where known, the line."""

  def __init__(self, path: str, line: int | None, reason: str):
    self.path, self.line, self.reason = path, line, reason
    where = f"{path}:{line}" if line is not None else path
    super().__init__(f"{where}: {reason}")


def skip_bad_examples_default() -> bool:
  """The gin macro `skip_bad_examples` (set by `--gin.skip_bad_examples=True`), else False."""
  try:
    return bool(gin.query_parameter("%skip_bad_examples"))
  except ValueError:
    return False


@dataclasses.dataclass(frozen=True)
class PairFields:
  """Field (JSONL) or column (TSV) names of each part of a pair."""

  x: str = "x"
  y: str = "y"
  negatives: tuple[str, ...] = ()
  teacher_scores: str | None = None


@dataclasses.dataclass
class PairRecords:
  """The pairs of some files, in file then line order.

  Attributes:
    x, y: the texts, one per pair.
    negatives: per pair, its hard-negative texts (possibly none).
    teacher_scores: per pair, the teacher's scores [1 + its negatives] (empty
      lists without a teacher-scores field).
    skipped: (path, line or None, reason) of each bad line or empty file skipped.
  """

  x: list[str] = dataclasses.field(default_factory=list)
  y: list[str] = dataclasses.field(default_factory=list)
  negatives: list[list[str]] = dataclasses.field(default_factory=list)
  teacher_scores: list[list[float]] = dataclasses.field(default_factory=list)
  skipped: list[tuple[str, int | None, str]] = dataclasses.field(default_factory=list)

  def __len__(self) -> int:
    return len(self.x)


def expand_patterns(patterns: str | Sequence[str]) -> list[str]:
  """Files matching each path or glob (sorted within a pattern, in pattern order).

  Raises:
    BadInputError: for a pattern that matches no file.
  """
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  files = []
  for pattern in patterns:
    pattern = pattern if paths.is_cloud(pattern) else os.path.expanduser(pattern)
    matched = paths.glob(pattern) if glob.has_magic(pattern) else (
        [pattern] if paths.path(pattern).exists() else [])
    matched = [m for m in matched if paths.path(m).is_file()]
    if not matched:
      raise BadInputError(pattern, None, "no such file (or the glob matches no file)")
    files.extend(m for m in matched if m not in files)
  return files


def file_format(path: str, format: str | None = None) -> str:  # pylint: disable=redefined-builtin
  """'jsonl' or 'tsv': `format` if given, else from the file name's suffix."""
  if format is not None:
    if format not in FORMATS:
      raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    return format
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in _SUFFIX_FORMATS:
    raise BadInputError(path, None, f"cannot tell the format from the suffix {suffix!r}; "
                        f"name files *.jsonl or *.tsv, or set the task's format")
  return _SUFFIX_FORMATS[suffix]


class _Bad(Exception):
  """One bad line; its reason."""


def _text(value, field: str) -> str:
  if not isinstance(value, str):
    raise _Bad(f"field {field!r} must be a string, got {type(value).__name__}")
  if not value.strip():
    raise _Bad(f"field {field!r} is empty")
  return value


def _negative_texts(value, field: str) -> list[str]:
  if isinstance(value, list):
    return [_text(v, f"{field}[{i}]") for i, v in enumerate(value)]
  return [_text(value, field)]


def _scores(value, field: str, negatives: int) -> list[float]:
  """The teacher's scores [1 + negatives] of a line: finite numbers, else _Bad."""
  if not isinstance(value, list):
    raise _Bad(f"field {field!r} must be a list of numbers (the positive's score, then each "
               f"negative's), got {type(value).__name__}")
  if len(value) != 1 + negatives:
    raise _Bad(f"field {field!r} holds {len(value)} scores; expected 1 + {negatives} "
               f"(the positive and each of the line's {negatives} negatives)")
  for i, v in enumerate(value):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise _Bad(f"field {field!r}[{i}] must be a number, got {v!r}")
    if not math.isfinite(v):
      raise _Bad(f"field {field!r}[{i}] is {v!r}; teacher scores must be finite")
  return [float(v) for v in value]


def _jsonl_example(line: str, fields: PairFields) -> tuple[str, str, list[str], list[float]]:
  """(x, y, negatives, teacher scores or []) of a JSONL line."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise _Bad(f"malformed JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(record, dict):
    raise _Bad(f"expected a JSON object, got {type(record).__name__}")
  for field in (fields.x, fields.y) + fields.negatives + _scores_field(fields):
    if field not in record:
      raise _Bad(f"missing field {field!r} (the line has {sorted(record)})")
  negatives = [n for f in fields.negatives for n in _negative_texts(record[f], f)]
  scores = []
  if fields.teacher_scores is not None:
    scores = _scores(record[fields.teacher_scores], fields.teacher_scores, len(negatives))
  return _text(record[fields.x], fields.x), _text(record[fields.y], fields.y), negatives, scores


def _jsonl_pair(line: str, fields: PairFields) -> tuple[str, str, list[str]]:
  return _jsonl_example(line, fields)[:3]


def _scores_field(fields: PairFields) -> tuple[str, ...]:
  return () if fields.teacher_scores is None else (fields.teacher_scores,)


def _decoded_lines(path: str):
  """(line number, text without the line break) of each line; _Bad for non-UTF-8 lines."""
  with paths.path(path).open("rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        yield number, raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        yield number, _Bad(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")


def _read_file(path: str, fields: PairFields, format: str | None, records: PairRecords,  # pylint: disable=redefined-builtin
               skip_bad_examples: bool) -> None:
  kind = file_format(path, format)
  found = 0
  columns = None
  for number, line in _decoded_lines(path):
    try:
      if isinstance(line, _Bad):
        raise line
      if not line.strip():
        continue
      if kind == "tsv" and columns is None:
        columns = _tsv_columns(path, number, line, fields)
        continue
      if kind == "jsonl":
        x, y, negatives, scores = _jsonl_example(line, fields)
      else:
        x, y, negatives, scores = _tsv_example(line, columns, fields)
    except _Bad as bad:
      if not skip_bad_examples:
        raise BadInputError(path, number, str(bad)) from None
      records.skipped.append((path, number, str(bad)))
      continue
    records.x.append(x)
    records.y.append(y)
    records.negatives.append(negatives)
    records.teacher_scores.append(scores)
    found += 1
  if not found and not any(p == path for p, _, _ in records.skipped):
    reason = "empty file (no pairs)" if columns is None else "no pairs after the TSV header"
    if not skip_bad_examples:
      raise BadInputError(path, None, reason)
    records.skipped.append((path, None, reason))


def _tsv_columns(path: str, number: int, header: str, fields: PairFields) -> dict[str, int]:
  names = header.split("\t")
  columns = {name: i for i, name in enumerate(names)}
  for field in (fields.x, fields.y) + fields.negatives + _scores_field(fields):
    if field not in columns:
      # A wrong header is a configuration mistake, never skipped.
      raise BadInputError(path, number, f"the TSV header has no column {field!r} (columns: {names})")
  return columns


def _tsv_example(line: str, columns: dict[str, int], fields: PairFields
                 ) -> tuple[str, str, list[str], list[float]]:
  """(x, y, negatives, teacher scores or []) of a TSV row; the scores column holds a JSON list."""
  values = line.split("\t")
  if len(values) != len(columns):
    raise _Bad(f"expected {len(columns)} tab-separated columns, got {len(values)}")
  get = lambda field: _text(values[columns[field]], field)  # noqa: E731
  negatives = [get(f) for f in fields.negatives]
  scores = []
  if fields.teacher_scores is not None:
    field = fields.teacher_scores
    try:
      value = json.loads(get(field))
    except json.JSONDecodeError:
      raise _Bad(f"column {field!r} must hold a JSON list of numbers, got "
                 f"{values[columns[field]][:40]!r}") from None
    scores = _scores(value, field, len(negatives))
  return get(fields.x), get(fields.y), negatives, scores


def _tsv_pair(line: str, columns: dict[str, int], fields: PairFields) -> tuple[str, str, list[str]]:
  return _tsv_example(line, columns, fields)[:3]


def read_pairs(patterns: str | Sequence[str], fields: PairFields = PairFields(),
               format: str | None = None,  # pylint: disable=redefined-builtin
               skip_bad_examples: bool | None = None) -> PairRecords:
  """Reads every pair of the files matching `patterns` (paths or globs).

  Args:
    patterns: a path or glob, or several.
    fields: which field or column holds x, y and the negatives.
    format: 'jsonl' | 'tsv'; None to tell from each file's suffix.
    skip_bad_examples: skip (and count, and log) bad lines instead of raising;
      None takes the gin macro `skip_bad_examples`.

  Raises:
    BadInputError: naming the file and line of the first bad line, or the empty
      file; also when no pair at all is left after skipping.
  """
  skip = skip_bad_examples_default() if skip_bad_examples is None else skip_bad_examples
  records = PairRecords()
  files = expand_patterns(patterns)
  for path in files:
    _read_file(path, fields, format, records, skip)
  if records.skipped:
    shown = "; ".join(f"{p}:{n}: {r}" if n else f"{p}: {r}"
                      for p, n, r in records.skipped[:_REASONS_LOGGED])
    log.warning("skipped %d bad lines or empty files (skip_bad_examples=True): %s%s",
                len(records.skipped), shown, " ..." if len(records.skipped) > _REASONS_LOGGED else "")
  if not records.x:
    raise BadInputError(", ".join(files), None, "no pairs in these files")
  return records


def file_stamp(path: str) -> tuple[int, int]:
  """(mtime, size) of a file: ns and bytes locally; in a bucket, the object's mtime in seconds."""
  if paths.is_cloud(path):
    stat = paths.path(path).stat()
    return stat.mtime, stat.length
  stat = os.stat(path)
  return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=16)
def _read_pairs_cached(files: tuple[str, ...], stamps, fields: PairFields, format, skip: bool) -> PairRecords:  # pylint: disable=redefined-builtin
  del stamps  # Cache key only.
  return read_pairs(files, fields, format, skip)


def read_pairs_cached(patterns: str | Sequence[str], fields: PairFields = PairFields(),
                      format: str | None = None,  # pylint: disable=redefined-builtin
                      skip_bad_examples: bool | None = None) -> PairRecords:
  """`read_pairs`, remembered until a file changes (shards of one split read it once).

  The returned records are shared: do not modify them.
  """
  skip = skip_bad_examples_default() if skip_bad_examples is None else skip_bad_examples
  files = tuple(expand_patterns(patterns))
  return _read_pairs_cached(files, tuple(file_stamp(f) for f in files), fields, format, skip)
