"""Built-in corpora from the local Python standard library: on every machine, no download.

`stdlib_code` (cpt-code): one pair per function or method with a docstring of at
least a few words: x = the docstring's first paragraph, y = the function's
source with the docstring removed. `stdlib_text` (cpt-text): neighbouring
paragraphs of the built-in help topics (`pydoc_data.topics`) and of module
docstrings.

Splits are by document (the module's path under the stdlib, or the help topic),
through a hash, so no module lands in two splits; a pair whose code (or, for
text, whose pair of paragraphs) was already seen is dropped, so there are no
exact duplicates within or across splits. Test folders and site-packages are
skipped; files that do not parse are skipped and counted.

Extraction takes a few seconds; its result is cached as JSONL files (fields
`x`, `y`, `doc`, `name`) under `cache_dir()`, keyed by Python version, stdlib
path and extractor version.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator

import gin

EXTRACTOR_VERSION = 2
CORPORA = ("stdlib_code", "stdlib_text")
SPLITS = ("train", "validation", "test")
# Cumulative upper bounds of each split's share of documents.
SPLIT_BOUNDS = (0.9, 0.95, 1.0)
SKIPPED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
    "lib-dynload", "turtledemo",
})
MIN_DOC_WORDS = 3
MIN_PARAGRAPH_WORDS = 5

_RULE_LINE = re.compile(r"^\s*([^\w\s])\1{2,}\s*$")  # ****** or ====== under a heading

log = logging.getLogger(__name__)


@gin.configurable
def cache_dir(path: str | None = None) -> str:
  """Folder for extracted corpora and trained vocabularies.

  `path` if given, else $EMBED_JAX_CACHE_DIR, else ~/.cache/embed_jax.
  """
  path = path or os.environ.get("EMBED_JAX_CACHE_DIR") or os.path.join("~", ".cache", "embed_jax")
  return os.path.expanduser(path)


def stdlib_root() -> str:
  """Folder of the running interpreter's pure-Python standard library."""
  return sysconfig.get_paths()["stdlib"]


def split_of(doc: str) -> str:
  """The split of a document, from a hash of its id: ~90% train, 5% validation, 5% test."""
  digest = hashlib.sha256(doc.encode("utf-8")).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  return next(split for split, bound in zip(SPLITS, SPLIT_BOUNDS) if u < bound)


def stdlib_files(root: str) -> list[tuple[str, str]]:
  """(module path relative to root with '/', absolute path) of every stdlib .py, sorted."""
  found = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("config-"))
    for name in files:
      if name.endswith(".py") and not name.startswith("test_"):
        path = os.path.join(folder, name)
        found.append((os.path.relpath(path, root).replace(os.sep, "/"), path))
  return sorted(found)


def first_paragraph(docstring: str) -> str:
  """The docstring's first paragraph on one line, whitespace collapsed."""
  return " ".join(docstring.strip().split("\n\n")[0].split())


def prose_paragraphs(text: str) -> list[str]:
  """Paragraphs of running text, each on one line; code blocks and headings dropped.

  A paragraph whose lines are all indented is a code example or grammar rule,
  one starting with `>>>` a doctest; a heading's underline is removed, and what is shorter than MIN_PARAGRAPH_WORDS
  words (headings, labels) is dropped.
  """
  kept = []
  for block in re.split(r"\n\s*\n", text):
    lines = [line for line in block.split("\n") if line.strip() and not _RULE_LINE.match(line)]
    if not lines or all(line[:1].isspace() for line in lines) or lines[0].lstrip().startswith(">>>"):
      continue
    paragraph = " ".join(" ".join(lines).split())
    if len(paragraph.split()) >= MIN_PARAGRAPH_WORDS:
      kept.append(paragraph)
  return kept


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_NESTED_STATEMENT_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")


def functions(statements: list[ast.stmt], scope: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
  """(qualified name, node) of every function and method among `statements`, nested ones too.

  Walks statement bodies only (a def cannot hide inside an expression), which is
  several times faster than visiting every node.
  """
  for node in statements:
    if isinstance(node, _FUNCTIONS + (ast.ClassDef,)):
      name = f"{scope}.{node.name}" if scope else node.name
      if isinstance(node, _FUNCTIONS):
        yield name, node
      yield from functions(node.body, name)
      continue
    for field in _NESTED_STATEMENT_FIELDS:
      for child in getattr(node, field, ()):
        # Except-handlers and match-cases are not statements; their bodies are.
        is_clause = isinstance(child, (ast.excepthandler, ast.match_case))
        yield from functions(child.body if is_clause else [child], scope)


def _source_without_docstring(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
  """The function's source (from `def`, dedented) minus its docstring lines.

  None when the docstring shares a line with other code (`def f(): "doc"; ...`).
  """
  doc = node.body[0]
  if doc.lineno <= node.lineno:
    return None
  if lines[doc.lineno - 1][:doc.col_offset].strip() or lines[doc.end_lineno - 1][doc.end_col_offset:].strip():
    return None
  after = lines[doc.end_lineno:node.end_lineno]
  while after and not after[0].strip():
    after = after[1:]
  kept = lines[node.lineno - 1:doc.lineno - 1] + after
  indent = kept[0][:node.col_offset]
  dedented = [line[len(indent):] if line.startswith(indent) else line for line in kept]
  return "".join(dedented).rstrip()


def code_pairs(source: str, doc: str, tree: ast.Module | None = None) -> Iterator[dict]:
  """(first docstring paragraph, code without docstring) of each documented function of `source`.

  `tree` is `ast.parse(source)` where the caller has it already.
  """
  tree = ast.parse(source) if tree is None else tree
  lines = source.splitlines(keepends=True)
  for name, node in functions(tree.body):
    docstring = ast.get_docstring(node)
    if not docstring or len(node.body) < 2:
      continue  # Undocumented, or nothing but the docstring.
    x = first_paragraph(docstring)
    if len(x.split()) < MIN_DOC_WORDS:
      continue
    y = _source_without_docstring(lines, node)
    if y is not None:
      yield {"x": x, "y": y, "doc": doc, "name": name}


def text_pairs(text: str, doc: str) -> Iterator[dict]:
  """(paragraph, next paragraph) of the prose paragraphs of `text`."""
  paragraphs = prose_paragraphs(text)
  for i, (x, y) in enumerate(zip(paragraphs, paragraphs[1:])):
    yield {"x": x, "y": y, "doc": doc, "name": f"{doc}#{i}"}


def extract(root: str | None = None) -> tuple[dict[str, list[dict]], dict]:
  """Extracts both corpora from the stdlib at `root` (default: this interpreter's).

  Returns:
    ({corpus: [pair, ...]} in a deterministic order, summary counts).
  """
  import pydoc_data.topics  # pylint: disable=import-outside-toplevel
  root = root or stdlib_root()
  pairs = {"stdlib_code": [], "stdlib_text": []}
  unparsable = []
  files = stdlib_files(root)
  for module, path in files:
    with open(path, "rb") as f:
      raw = f.read()
    try:
      source = raw.decode("utf-8")
      tree = ast.parse(source)
      module_doc = ast.get_docstring(tree)
      pairs["stdlib_code"].extend(code_pairs(source, module, tree))
    except (SyntaxError, UnicodeDecodeError, ValueError):
      unparsable.append(module)
      continue
    if module_doc:
      pairs["stdlib_text"].extend(text_pairs(module_doc, module))
  for topic in sorted(pydoc_data.topics.topics):
    pairs["stdlib_text"].extend(text_pairs(pydoc_data.topics.topics[topic], f"topics/{topic}"))

  pairs["stdlib_code"] = _dedupe(pairs["stdlib_code"], key=lambda p: p["y"])
  pairs["stdlib_text"] = _dedupe(pairs["stdlib_text"], key=lambda p: (p["x"], p["y"]))
  summary = {
      "python": sys.version.split()[0], "stdlib": root, "extractor_version": EXTRACTOR_VERSION,
      "files": len(files), "unparsable_files": unparsable,
      "pairs": {c: {s: sum(split_of(p["doc"]) == s for p in ps) for s in SPLITS}
                for c, ps in pairs.items()},
  }
  if unparsable:
    log.info("stdlib corpus: skipped %d files that do not parse: %s", len(unparsable), unparsable)
  return pairs, summary


def _dedupe(pairs: list[dict], key) -> list[dict]:
  seen, kept = set(), []
  for pair in pairs:
    k = key(pair)
    if k not in seen:
      seen.add(k)
      kept.append(pair)
  return kept


def corpus_folder(cache: str | None = None, root: str | None = None) -> str:
  """Where the corpora of this interpreter's stdlib are cached."""
  root = root or stdlib_root()
  key = hashlib.sha256(f"{root}|{EXTRACTOR_VERSION}".encode()).hexdigest()[:10]
  version = "{}.{}".format(*sys.version_info[:2])
  return os.path.join(cache or cache_dir(), f"stdlib_corpus-py{version}-{key}")


def build(cache: str | None = None, root: str | None = None) -> str:
  """Extracts and caches both corpora unless already cached; returns the folder.

  The folder holds `<corpus>/<split>.jsonl` and `summary.json` (see `build_cached`).
  """
  def write(staging: str) -> dict:
    pairs, summary = extract(root)
    for corpus, corpus_pairs in pairs.items():
      os.makedirs(os.path.join(staging, corpus))
      for split in SPLITS:
        with open(os.path.join(staging, corpus, f"{split}.jsonl"), "w", encoding="utf-8") as f:
          for pair in corpus_pairs:
            if split_of(pair["doc"]) == split:
              f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    return summary
  return build_cached(corpus_folder(cache, root), write, "stdlib corpus")


def build_cached(folder: str, write, what: str) -> str:
  """`folder`, built by `write(staging) -> summary` unless it already holds `summary.json`.

  Written under a temporary name beside it and renamed into place, `summary.json`
  last, so concurrent builders are safe and a cut-short build is never taken as cached.
  """
  if os.path.isfile(os.path.join(folder, "summary.json")):
    return folder
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}-", dir=os.path.dirname(folder))
  try:
    summary = write(staging)
    with open(os.path.join(staging, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
    try:
      os.replace(staging, folder)
    except OSError:
      if not os.path.isfile(os.path.join(folder, "summary.json")):
        raise  # Not a lost race with another builder.
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  log.info("%s cached in %s: %s", what, folder, summary["pairs"])
  return folder


def corpus_file(corpus: str, split: str, cache: str | None = None) -> str:
  """Path of one cached split of one corpus (extracting first if needed)."""
  if corpus not in CORPORA or split not in SPLITS:
    raise ValueError(f"unknown stdlib corpus split {corpus}:{split}; "
                     f"corpora {CORPORA}, splits {SPLITS}")
  return os.path.join(build(cache), corpus, f"{split}.jsonl")
