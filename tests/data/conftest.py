"""Fixtures of the data tests: pair files."""

import json

import pytest


def _write_jsonl(path, records):
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


@pytest.fixture
def write_jsonl():
  """write_jsonl(path, records): dicts as JSON (strings as they are), one a line; returns the path."""
  return _write_jsonl
