"""Code and documentation pairs from any Python tree; the built-in `python_code` / `python_docs`.

`extract(trees)` walks each (root, name) tree: every .py file outside test
folders (`test`, `tests`, `testing`, ...; files `test_*.py`, `*_test.py`,
`conftest.py`) and outside the excluded packages (numpy and scipy always: the
project reserves them for held-out evaluation). From each parsable file:

  code  (first docstring paragraph, function or method source without its
        docstring), async functions and nested functions too
        (`stdlib_corpus.code_pairs`);
  docs  the module docstring as a document;

and per installed distribution its long description (`*.dist-info/METADATA`
body), plus the stdlib help topics. Documents become `neighbouring` pairs of
prose paragraphs (code blocks and headings dropped, `stdlib_corpus.prose_paragraphs`).

A pair's split comes from a hash of its document id (`<tree>/<path>`, so one
file never lands in two splits); exact duplicates (same code, or the same pair
of paragraphs) are dropped. Files are parsed by a pool of worker processes and
written in sorted order, so the result does not depend on the pool's size.

The built-in corpora read the running interpreter's stdlib and site-packages
(both minus numpy, scipy and tests) and are cached as JSONL (`x`, `y`, `doc`,
`name`) under `stdlib_corpus.cache_dir()`, keyed by the trees, the installed
distributions' versions, the extractor version and the evaluation data: pairs
duplicating a text of the eval suite's sets (`eval_data_dir()`) are dropped
when the cache is written (`decontamination`), counted in `summary.json`.
"""

from __future__ import annotations

import ast
import email.parser
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import sysconfig
from collections.abc import Iterable, Sequence

import gin

from embed_jax.data import decontamination, stdlib_corpus
from embed_jax.data.documents import join_paragraphs
from embed_jax.data.pair_builders import Neighbouring
from embed_jax.data.stdlib_corpus import SPLITS, split_of
from embed_jax.errors import UserError

EXTRACTOR_VERSION = 1
CORPORA = ("python_code", "python_docs")
EXCLUDED_PACKAGES = ("numpy", "scipy")
TEST_DIRS = frozenset({"test", "tests", "testing", "idle_test", "unittests", "test_data", "testdata"})
SKIPPED_DIRS = frozenset({"__pycache__", "site-packages", "dist-packages", "lib-dynload",
                          "turtledemo", ".git"})
DOC_PAIRS = Neighbouring(unit="paragraph", x_words=128, y_words=128, min_span_words=5,
                         min_document_words=10)

log = logging.getLogger(__name__)


class CorpusError(UserError):
  """A tree or package to extract from does not exist."""


def _base_name(part: str) -> str:
  """'numpy' for 'numpy', 'numpy.libs', 'numpy-2.0.dist-info'."""
  return part.split("-")[0].split(".")[0].lower()


def is_excluded(relative: str, excluded: Iterable[str] = EXCLUDED_PACKAGES) -> bool:
  """True for a path (relative to its tree, '/' separated) inside an excluded package or a test."""
  parts = relative.split("/")
  excluded = {e.lower() for e in excluded} | set(EXCLUDED_PACKAGES)
  if any(_base_name(p) in excluded or p in TEST_DIRS or p in SKIPPED_DIRS for p in parts[:-1]):
    return True
  name = parts[-1]
  return (_base_name(name) in excluded or name.startswith("test_") or name.endswith("_test.py")
          or name == "conftest.py")


def python_files(root: str, excluded: Iterable[str] = EXCLUDED_PACKAGES) -> list[tuple[str, str]]:
  """(path relative to root with '/', absolute path) of every kept .py file under root, sorted."""
  if not os.path.isdir(root):
    raise CorpusError(f"{root}: not a folder to extract Python code from")
  excluded = tuple(excluded)
  found = []
  for folder, dirs, files in os.walk(root):
    rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
    rel_folder = "" if rel_folder == "." else rel_folder + "/"
    dirs[:] = sorted(d for d in dirs if not d.startswith("config-")
                     and not is_excluded(f"{rel_folder}{d}/x.py", excluded))
    for name in files:
      relative = rel_folder + name
      if name.endswith(".py") and not is_excluded(relative, excluded):
        found.append((relative, os.path.join(folder, name)))
  return sorted(found)


def _parse_file(job: tuple[str, str]) -> tuple[str, list[dict] | None, str | None]:
  """(doc id, code pairs or None when it does not parse, module docstring)."""
  doc, path = job
  try:
    with open(path, "rb") as f:
      source = f.read().decode("utf-8")
    tree = ast.parse(source)
    return doc, list(stdlib_corpus.code_pairs(source, doc, tree)), ast.get_docstring(tree)
  except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError, MemoryError, OSError):
    return doc, None, None


def doc_pairs(text: str, doc: str) -> list[dict]:
  """`neighbouring` pairs of the prose paragraphs of a documentation text."""
  document = join_paragraphs(stdlib_corpus.prose_paragraphs(text))
  return [{"x": x, "y": y, "doc": doc, "name": f"{doc}#{i}"}
          for i, (x, y) in enumerate(DOC_PAIRS.build(document, seed=0))]


def distribution_descriptions(site_dirs: Sequence[str],
                              excluded: Iterable[str] = EXCLUDED_PACKAGES) -> list[tuple[str, str]]:
  """(doc id 'metadata/<name>', long description) of each distribution installed in `site_dirs`."""
  out = []
  excluded = {e.lower() for e in excluded} | set(EXCLUDED_PACKAGES)
  for site_dir in site_dirs:
    if not os.path.isdir(site_dir):
      continue
    for entry in sorted(os.listdir(site_dir)):
      metadata = os.path.join(site_dir, entry, "METADATA")
      if not entry.endswith(".dist-info") or _base_name(entry) in excluded or not os.path.isfile(metadata):
        continue
      with open(metadata, "rb") as f:
        message = email.parser.BytesParser().parse(f)
      body = message.get_payload()
      body = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
      if not body.strip():
        body = message.get("Description", "") or ""
      if body.strip():
        out.append((f"metadata/{_base_name(entry)}", body))
  return out


def _processes(requested: int | None) -> int:
  return max(1, requested if requested else min(4, os.cpu_count() or 1))


def extract_to(folder: str, trees: Sequence[tuple[str, str]], site_dirs: Sequence[str] = (),
               help_topics: bool = False, excluded: Iterable[str] = EXCLUDED_PACKAGES,
               processes: int | None = None) -> dict:
  """Writes `<folder>/<corpus>/<split>.jsonl` for both corpora; returns the summary.

  Args:
    trees: (root folder, name) pairs; a document id is `<name>/<path under root>`.
    site_dirs: folders whose `*.dist-info/METADATA` descriptions are documents.
    help_topics: include the stdlib help topics (`pydoc_data.topics`) as documents.
    excluded: packages skipped besides numpy and scipy.
    processes: parser processes (default: up to 4, the CPUs).
  """
  excluded = tuple(excluded)
  jobs = [(f"{name}/{rel}", path) for root, name in trees for rel, path in python_files(root, excluded)]
  handles = {}
  for corpus in CORPORA:
    os.makedirs(os.path.join(folder, corpus), exist_ok=True)
    for split in SPLITS:
      handles[corpus, split] = open(os.path.join(folder, corpus, f"{split}.jsonl"), "w", encoding="utf-8")
  seen = {corpus: set() for corpus in CORPORA}
  counts = {corpus: dict.fromkeys(SPLITS, 0) for corpus in CORPORA}
  duplicates = dict.fromkeys(CORPORA, 0)

  def write(corpus: str, pairs: Iterable[dict], key) -> None:
    for pair in pairs:
      digest = hashlib.sha1(key(pair).encode("utf-8")).digest()
      if digest in seen[corpus]:
        duplicates[corpus] += 1
        continue
      seen[corpus].add(digest)
      split = split_of(pair["doc"])
      handles[corpus, split].write(json.dumps(pair, ensure_ascii=False) + "\n")
      counts[corpus][split] += 1

  code_key = lambda p: p["y"]  # noqa: E731
  text_key = lambda p: p["x"] + "\x00" + p["y"]  # noqa: E731
  unparsable = []
  workers = _processes(processes)
  try:
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 and len(jobs) > 64 else None
    try:
      results = pool.imap(_parse_file, jobs, chunksize=16) if pool else map(_parse_file, jobs)
      for doc, pairs, module_doc in results:  # In job order, whatever the pool's size.
        if pairs is None:
          unparsable.append(doc)
          continue
        write("python_code", pairs, code_key)
        if module_doc:
          write("python_docs", doc_pairs(module_doc, doc), text_key)
    finally:
      if pool:
        pool.terminate()
    for doc, text in distribution_descriptions(site_dirs, excluded):
      write("python_docs", doc_pairs(text, doc), text_key)
    if help_topics:
      import pydoc_data.topics  # pylint: disable=import-outside-toplevel
      for topic in sorted(pydoc_data.topics.topics):
        write("python_docs", doc_pairs(pydoc_data.topics.topics[topic], f"topics/{topic}"), text_key)
  finally:
    for handle in handles.values():
      handle.close()
  if unparsable:
    log.info("python corpus: skipped %d files that do not parse (first: %s)", len(unparsable), unparsable[:5])
  return {"extractor_version": EXTRACTOR_VERSION, "trees": [list(t) for t in trees],
          "site_dirs": list(site_dirs), "excluded": sorted(set(excluded) | set(EXCLUDED_PACKAGES)),
          "files": len(jobs), "unparsable_files": len(unparsable), "duplicates_dropped": duplicates,
          "pairs": counts}


def builtin_trees() -> tuple[list[tuple[str, str]], list[str]]:
  """The built-in corpora's trees (stdlib, site-packages) and site folders of this interpreter."""
  paths = sysconfig.get_paths()
  site_dirs = sorted({paths["purelib"], paths["platlib"]})
  trees = [(stdlib_corpus.stdlib_root(), "stdlib")]
  trees += [(d, "site-packages" if i == 0 else f"site-packages{i}") for i, d in enumerate(site_dirs)
            if os.path.isdir(d)]
  return trees, site_dirs


def _installed_versions(site_dirs: Sequence[str]) -> list[str]:
  return sorted(e for d in site_dirs if os.path.isdir(d) for e in os.listdir(d) if e.endswith(".dist-info"))


@gin.configurable
def eval_data_dir(path: str | None = None) -> str | None:
  """The evaluation data the built-in corpora are decontaminated against, or None.

  `path` if given ('' for none), else $EMBED_JAX_EVAL_DATA, else the first of
  ./../shared/datasets and <checkout>/../shared/datasets that exists.
  """
  if path is not None:
    return path or None
  if "EMBED_JAX_EVAL_DATA" in os.environ:
    return os.environ["EMBED_JAX_EVAL_DATA"] or None
  checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for candidate in (os.path.join("..", "shared", "datasets"),
                    os.path.join(checkout, "..", "shared", "datasets")):
    if os.path.isdir(candidate):
      return os.path.abspath(candidate)
  return None


def _eval_stamp(data_dir: str | None) -> str:
  if not data_dir or not os.path.isdir(data_dir):
    return "none"
  return hashlib.sha256(repr(decontamination._stamp(data_dir)).encode()).hexdigest()[:10]  # pylint: disable=protected-access


def decontaminate_folder(folder: str, data_dir: str | None) -> dict | None:
  """Rewrites each `<corpus>/<split>.jsonl` without pairs duplicating eval texts; the report."""
  found = decontamination.decontaminator(data_dir) if data_dir else None
  if found is None:
    return None
  checker, missing = found
  out = {"against": data_dir}
  for corpus in CORPORA:
    for split in SPLITS:
      path = os.path.join(folder, corpus, f"{split}.jsonl")
      with open(path, encoding="utf-8") as f:
        lines = f.readlines()
      keep, report = decontamination.filter_pairs(
          ((p["x"], p["y"]) for p in map(json.loads, lines)), checker, missing)
      with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[i] for i in keep)
      out[f"{corpus}/{split}"] = report.as_dict()
  return out


def corpus_folder(cache: str | None = None) -> str:
  """Where this interpreter's built-in python corpora are cached."""
  trees, site_dirs = builtin_trees()
  key = json.dumps([EXTRACTOR_VERSION, trees, _installed_versions(site_dirs), _eval_stamp(eval_data_dir())])
  digest = hashlib.sha256(key.encode()).hexdigest()[:10]
  version = "{}.{}".format(*sys.version_info[:2])
  return os.path.join(cache or stdlib_corpus.cache_dir(), f"python_corpus-py{version}-{digest}")


def build(cache: str | None = None, processes: int | None = None) -> str:
  """Extracts, decontaminates and caches the built-in corpora unless cached; returns the folder
  (`stdlib_corpus.build_cached`: concurrent builders are safe)."""
  def write(staging: str) -> dict:
    trees, site_dirs = builtin_trees()
    summary = extract_to(staging, trees, site_dirs, help_topics=True, processes=processes)
    summary["decontamination"] = decontaminate_folder(staging, eval_data_dir())
    return summary
  return stdlib_corpus.build_cached(corpus_folder(cache), write, "python corpora")


def corpus_file(corpus: str, split: str, cache: str | None = None) -> str:
  """Path of one cached split of `python_code` or `python_docs` (extracting first if needed)."""
  if corpus not in CORPORA or split not in SPLITS:
    raise CorpusError(f"unknown python corpus split {corpus}:{split}; corpora {CORPORA}, splits {SPLITS}")
  return os.path.join(build(cache), corpus, f"{split}.jsonl")


def package_trees(packages: Sequence[str]) -> list[tuple[str, str]]:
  """(folder, name) of installed top-level packages by import name; numpy and scipy refused."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  trees = []
  for name in packages:
    if _base_name(name) in EXCLUDED_PACKAGES:
      raise CorpusError(f"package {name!r} is reserved for held-out evaluation and never extracted")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
      raise CorpusError(f"package {name!r} is not installed (or is a single module, not a package)")
    trees.append((list(spec.submodule_search_locations)[0], name))
  return trees
