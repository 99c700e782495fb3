"""The built-in stdlib corpora: size, module-disjoint splits, no duplicates, clean pairs.

Oracles: `inspect` on the imported stdlib (docstrings, sources) and `ast` on the
extracted code.
"""

import ast
import inspect
import json
import os

import pytest

from embed_jax.data import stdlib_corpus


@pytest.fixture(scope="module")
def corpus():
  """{corpus: {split: [pair, ...]}} from a fresh build in the test cache."""
  folder = stdlib_corpus.build()
  out = {}
  for name in stdlib_corpus.CORPORA:
    out[name] = {}
    for split in stdlib_corpus.SPLITS:
      with open(os.path.join(folder, name, f"{split}.jsonl"), encoding="utf-8") as f:
        out[name][split] = [json.loads(line) for line in f]
  return out


def test_thousands_of_code_pairs_and_many_text_pairs(corpus):
  sizes = {c: {s: len(p) for s, p in splits.items()} for c, splits in corpus.items()}
  assert sum(sizes["stdlib_code"].values()) > 4000, sizes
  assert sizes["stdlib_code"]["train"] > 3000, sizes
  assert sum(sizes["stdlib_text"].values()) > 800, sizes
  assert all(n > 10 for splits in sizes.values() for n in splits.values()), sizes


def test_splits_are_disjoint_by_module(corpus):
  for name, splits in corpus.items():
    docs = {split: {p["doc"] for p in pairs} for split, pairs in splits.items()}
    assert not docs["train"] & docs["validation"], name
    assert not docs["train"] & docs["test"], name
    assert not docs["validation"] & docs["test"], name
    for split, pairs in splits.items():
      assert all(stdlib_corpus.split_of(p["doc"]) == split for p in pairs)
  # A module's code and its docstring's paragraphs land in the same split.
  code_docs = {p["doc"]: s for s, ps in corpus["stdlib_code"].items() for p in ps}
  text_docs = {p["doc"]: s for s, ps in corpus["stdlib_text"].items() for p in ps}
  assert all(code_docs[d] == s for d, s in text_docs.items() if d in code_docs)


def test_no_tests_or_site_packages(corpus):
  docs = {p["doc"] for splits in corpus.values() for pairs in splits.values() for p in pairs}
  assert not any(part in stdlib_corpus.SKIPPED_DIRS for d in docs for part in d.split("/")[:-1])
  assert "json/decoder.py" in docs and any(d.startswith("topics/") for d in docs)


def test_no_exact_duplicates(corpus):
  code = [p["y"] for pairs in corpus["stdlib_code"].values() for p in pairs]
  assert len(code) == len(set(code))
  text = [(p["x"], p["y"]) for pairs in corpus["stdlib_text"].values() for p in pairs]
  assert len(text) == len(set(text))


def test_code_is_one_function_without_its_docstring(corpus):
  for pairs in corpus["stdlib_code"].values():
    for p in pairs:
      tree = ast.parse(p["y"])
      assert len(tree.body) == 1 and isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef))
      assert tree.body[0].name == p["name"].split(".")[-1]
      assert ast.get_docstring(tree.body[0]) is None, p["name"]
      assert len(p["x"].split()) >= stdlib_corpus.MIN_DOC_WORDS and "\n" not in p["x"]


def test_pairs_match_inspect_on_the_real_functions(corpus):
  import json as json_module  # pylint: disable=import-outside-toplevel
  import textwrap  # pylint: disable=import-outside-toplevel
  by_name = {(p["doc"], p["name"]): p for pairs in corpus["stdlib_code"].values() for p in pairs}
  for doc, name, fn in (("json/__init__.py", "dumps", json_module.dumps),
                        ("textwrap.py", "TextWrapper.wrap", textwrap.TextWrapper.wrap)):
    pair = by_name[(doc, name)]
    assert pair["x"] == " ".join(inspect.getdoc(fn).split("\n\n")[0].split())
    source = inspect.getsource(fn)
    assert pair["y"].splitlines()[0] == source.lstrip().splitlines()[0]
    assert inspect.getdoc(fn).splitlines()[0] not in pair["y"]
    assert pair["y"].splitlines()[-1].strip() == source.rstrip().splitlines()[-1].strip()


def test_text_pairs_are_neighbouring_paragraphs():
  text = "Heading\n*******\n\nFirst paragraph has enough words here.\n\n   code = 1\n\n" \
         ">>> print('a doctest is code, not prose')\n\n" \
         "Second paragraph,\nwrapped over lines, also long.\n\nToo short."
  pairs = list(stdlib_corpus.text_pairs(text, "doc"))
  assert [(p["x"], p["y"]) for p in pairs] == [
      ("First paragraph has enough words here.", "Second paragraph, wrapped over lines, also long.")]


def test_unparsable_files_are_skipped_and_counted(tmp_path):
  root = tmp_path / "lib"
  (root / "pkg").mkdir(parents=True)
  (root / "pkg" / "good.py").write_text('def f(x):\n  """Return x plus one always."""\n  return x + 1\n')
  (root / "broken.py").write_text("def f(:\n")
  (root / "tests").mkdir()
  (root / "tests" / "t.py").write_text('def g():\n  """Not to be read at all."""\n  return 1\n')
  pairs, summary = stdlib_corpus.extract(str(root))
  assert summary["unparsable_files"] == ["broken.py"]
  assert summary["files"] == 2
  assert [(p["x"], p["y"], p["doc"]) for p in pairs["stdlib_code"]] == [
      ("Return x plus one always.", "def f(x):\n  return x + 1", "pkg/good.py")]


def test_build_reuses_the_cache(monkeypatch, corpus):
  del corpus  # Built already.
  monkeypatch.setattr(stdlib_corpus, "extract", lambda *a: pytest.fail("extracted again"))
  assert os.path.isdir(stdlib_corpus.build())
