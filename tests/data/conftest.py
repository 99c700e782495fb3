"""Fixtures of the data tests: a private cache folder, small vocabularies, pair files."""

import json
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
  """Corpora and vocabularies go to a fresh folder, not the user's ~/.cache."""
  previous = os.environ.get("EMBED_JAX_CACHE_DIR")
  os.environ["EMBED_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("embed_jax_cache"))
  yield
  if previous is None:
    os.environ.pop("EMBED_JAX_CACHE_DIR", None)
  else:
    os.environ["EMBED_JAX_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def sentencepiece_path(tmp_path_factory):
  """A small SentencePiece model (1,000 pieces) trained on the Python help topics."""
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel
  from embed_jax.data import sentencepiece_training  # pylint: disable=import-outside-toplevel
  texts = [p for text in pydoc_data.topics.topics.values() for p in text.split("\n\n") if p.strip()]
  return sentencepiece_training.train_sentencepiece(
      texts, str(tmp_path_factory.mktemp("vocab") / "topics.model"), vocab_size=1000)


def _write_jsonl(path, records):
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


@pytest.fixture
def write_jsonl():
  """write_jsonl(path, records): dicts as JSON (strings as they are), one a line; returns the path."""
  return _write_jsonl
