"""Reading documents (not pairs) from text or JSONL files, lazily (no tensorflow).

Formats:
  text   `separator='file'`: each file is one document, its paragraphs separated
         by blank lines. `separator='blank_line'`: each blank-line separated
         block of a file is one document, its lines are its paragraphs.
  jsonl  one JSON object per line with a text field (and optionally a title
         field, which becomes the document's first paragraph).

Files are read line by line, so a file larger than memory streams (except one
document that is a whole file under `separator='file'`). A document is the
string of its paragraphs joined by one blank line, whitespace within each
paragraph collapsed. Bad lines raise `pair_files.BadInputError` naming file and
line (or are skipped and counted with `skip_bad_examples`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence

from embed_jax.data import pair_files
from embed_jax.data.pair_files import BadInputError

FORMATS = ("text", "jsonl")
SEPARATORS = ("file", "blank_line")
_SUFFIX_FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".rst": "text",
                   ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


@dataclasses.dataclass(frozen=True)
class DocumentFields:
  """How documents are laid out in their files.

  Attributes:
    format: 'text' | 'jsonl', or None to tell from each file's suffix
      (.txt .text .md .rst: text; .jsonl .json .ndjson: jsonl).
    separator: text files only: 'file' (one document per file) or 'blank_line'.
    text_field, title_field: JSONL only: the field of the text, and of an
      optional title ('' for none; a record without it has no title).
  """

  format: str | None = None
  separator: str = "file"
  text_field: str = "text"
  title_field: str = ""

  def __post_init__(self):
    if self.format is not None and self.format not in FORMATS:
      raise pair_files.BadInputError("DocumentFields.format", None,
                                     f"must be one of {FORMATS} or None, got {self.format!r}")
    if self.separator not in SEPARATORS:
      raise pair_files.BadInputError("DocumentFields.separator", None,
                                     f"must be one of {SEPARATORS}, got {self.separator!r}")


def document_format(path: str, fields: DocumentFields) -> str:
  """'text' or 'jsonl' for `path`: the configured format, else from the suffix."""
  if fields.format is not None:
    return fields.format
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in _SUFFIX_FORMATS:
    raise BadInputError(path, None, f"cannot tell a document format from the suffix {suffix!r}; "
                        f"name files *.txt or *.jsonl, or set the task's format")
  return _SUFFIX_FORMATS[suffix]


def join_paragraphs(paragraphs: Sequence[str]) -> str:
  """Paragraphs, whitespace collapsed within each, joined by a blank line; empty ones dropped."""
  kept = (" ".join(p.split()) for p in paragraphs)
  return "\n\n".join(p for p in kept if p)


def paragraphs(text: str) -> list[str]:
  """The paragraphs of a document string (blank-line separated), whitespace collapsed."""
  return [p for p in (" ".join(block.split()) for block in text.split("\n\n")) if p]


def _lines(path: str) -> Iterator[tuple[int, str]]:
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        yield number, raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise BadInputError(path, number, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                            f"{e.start + 1})") from None


def _text_documents(path: str, separator: str) -> Iterator[tuple[str, str]]:
  if separator == "file":
    blocks, current = [], []
    for _, line in _lines(path):
      if line.strip():
        current.append(line)
      elif current:
        blocks.append(" ".join(current))
        current = []
    if current:
      blocks.append(" ".join(current))
    text = join_paragraphs(blocks)
    if text:
      yield path, text
    return
  current, start = [], None
  for number, line in _lines(path):
    if line.strip():
      if not current:
        start = number
      current.append(line)
    elif current:
      yield f"{path}:{start}", join_paragraphs(current)
      current = []
  if current:
    yield f"{path}:{start}", join_paragraphs(current)


def _jsonl_documents(path: str, fields: DocumentFields, skipped: list) -> Iterator[tuple[str, str]]:
  for number, line in _lines(path):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      reason = f"malformed JSON ({e.msg} at column {e.colno})"
    else:
      if not isinstance(record, dict):
        reason = f"expected a JSON object, got {type(record).__name__}"
      elif not isinstance(record.get(fields.text_field), str):
        reason = (f"missing text field {fields.text_field!r} (the line has {sorted(record)})"
                  if fields.text_field not in record else f"field {fields.text_field!r} is not a string")
      else:
        title = record.get(fields.title_field) if fields.title_field else None
        parts = ([title] if isinstance(title, str) else []) + paragraphs(record[fields.text_field])
        yield f"{path}:{number}", join_paragraphs(parts)
        continue
    if not pair_files.skip_bad_examples_default():
      raise BadInputError(path, number, reason)
    skipped.append((path, number, reason))


def read_documents(path: str, fields: DocumentFields = DocumentFields(),
                   skipped: list | None = None) -> Iterator[tuple[str, str]]:
  """(document id, text) of each document of one file, lazily, in file order.

  The id is the path (a whole-file document) or `path:line` of its first line.
  Bad JSONL lines are appended to `skipped` as (path, line, reason) when gin's
  `skip_bad_examples` is set; otherwise they raise `BadInputError`.
  """
  skipped = [] if skipped is None else skipped
  if document_format(path, fields) == "jsonl":
    yield from _jsonl_documents(path, fields, skipped)
  else:
    yield from _text_documents(path, fields.separator)


def iter_documents(files: Sequence[str], fields: DocumentFields = DocumentFields(),
                   shard: int = 0, num_shards: int = 1) -> Iterator[tuple[str, str]]:
  """The documents of shard `shard` of `num_shards` over `files`, lazily.

  With at least as many files as shards, shard i reads only files i, i + n, ...
  (no process opens another's files); with fewer files every shard reads them
  all and keeps documents i, i + n, ... of their concatenation.
  """
  if len(files) >= num_shards:
    for path in files[shard::num_shards]:
      yield from read_documents(path, fields)
    return
  index = 0
  for path in files:
    for doc in read_documents(path, fields):
      if index % num_shards == shard:
        yield doc
      index += 1
