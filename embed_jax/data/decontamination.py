"""Keeping evaluation data out of training pairs: exact and near-duplicate matches (no tensorflow).

A text matches an evaluation text when, after normalisation (lower case, runs
of whitespace collapsed to one space),

  exact:  the two are equal; or
  near:   they share word n-grams (n = `ngram`, default 8) covering at least
          `threshold` (default 0.8) of the n-grams of either text. The
          containment is taken both ways, so an evaluation sentence copied into
          a longer training paragraph matches, and so does a training span
          copied out of a longer evaluation document. Texts shorter than n
          words match exactly only.

N-grams that occur in more than `max_posting` (default 100) evaluation texts
(boilerplate such as `def __init__ ( self ,`) are not indexed: they tell
nothing about which text was copied and would make lookups slow.

A pair is dropped when its x, its y or one of its negatives matches a text of
any evaluation set; the drop is counted against the first such set (in
`EVAL_SETS` order). `evaluation_sets(data_dir)` reads the sets the eval suite
reads from `--data_dir` (missing folders are skipped and reported, so a
machine without the data still works).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

NGRAM = 8
THRESHOLD = 0.8
MAX_POSTING = 100

_SENTEVAL_FILES = {
    "mr": ("rt-polarity.all",), "cr": ("custrev.all",), "subj": ("subj.all",), "mpqa": ("mpqa.all",),
    "sst2": ("stsa.binary.train", "stsa.binary.dev", "stsa.binary.test"),
    "trec": ("TREC.train.all", "TREC.test.all"),
}
EVAL_SETS = tuple(_SENTEVAL_FILES) + ("mrpc", "stsb", "scifact", "cosqa")


def normalize(text: str) -> str:
  """Lower case, whitespace runs collapsed to one space, ends stripped."""
  return " ".join(text.lower().split())


def _hash(text: str) -> int:
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def ngrams(normalized: str, n: int = NGRAM) -> np.ndarray:
  """Sorted distinct 64-bit hashes of the word n-grams of a normalised text (none if shorter)."""
  words = normalized.split(" ")
  if len(words) < n:
    return np.zeros(0, np.uint64)
  return np.unique(np.array([_hash(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)],
                            np.uint64))


class Decontaminator:
  """Tells which evaluation set, if any, a text duplicates.

  Args:
    eval_sets: set name -> its texts.
    ngram, threshold, max_posting: see the module docstring.
  """

  def __init__(self, eval_sets: Mapping[str, Sequence[str]], ngram: int = NGRAM,
               threshold: float = THRESHOLD, max_posting: int = MAX_POSTING):
    if not 0.0 < threshold <= 1.0:
      raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    self.ngram, self.threshold, self.max_posting = ngram, threshold, max_posting
    self.set_names = list(eval_sets)
    self.exact: dict[int, int] = {}  # normalised hash -> set index (first set wins).
    owners, sizes, grams = [], [], []
    for s, texts in enumerate(eval_sets.values()):
      for text in texts:
        normalized = normalize(text)
        if not normalized:
          continue
        self.exact.setdefault(_hash(normalized), s)
        g = ngrams(normalized, ngram)
        if g.size:
          grams.append(g)
          owners.append(s)
          sizes.append(g.size)
    self.text_set = np.array(owners, np.int32)
    self.text_size = np.array(sizes, np.int64)
    # Posting lists as two sorted arrays: n-gram hash -> ids of the texts holding it.
    all_grams = np.concatenate(grams) if grams else np.zeros(0, np.uint64)
    ids = np.repeat(np.arange(len(grams), dtype=np.int64), sizes) if grams else np.zeros(0, np.int64)
    order = np.argsort(all_grams, kind="stable")
    all_grams, ids = all_grams[order], ids[order]
    unique, starts, counts = np.unique(all_grams, return_index=True, return_counts=True)
    keep = np.repeat(counts <= max_posting, counts)
    self._grams, self._ids = all_grams[keep], ids[keep]
    self.sizes = {name: len(texts) for name, texts in eval_sets.items()}
    del unique, starts

  def match(self, text: str) -> str | None:
    """The name of the first evaluation set holding an exact or near duplicate of `text`, or None."""
    normalized = normalize(text)
    s = self.exact.get(_hash(normalized))
    if s is not None:
      return self.set_names[s]
    mine = ngrams(normalized, self.ngram)
    if not mine.size or not self._grams.size:
      return None
    lo = np.searchsorted(self._grams, mine, "left")
    hi = np.searchsorted(self._grams, mine, "right")
    hits = lo < hi
    if not hits.any():
      return None
    ids = np.concatenate([self._ids[a:b] for a, b in zip(lo[hits], hi[hits])])
    texts, shared = np.unique(ids, return_counts=True)
    containment = np.maximum(shared / mine.size, shared / self.text_size[texts])
    near = texts[containment >= self.threshold]
    if not near.size:
      return None
    return self.set_names[int(self.text_set[near].min())]

  def match_pair(self, texts: Iterable[str]) -> str | None:
    """The first evaluation set any of the texts (x, y, negatives) duplicates, or None."""
    found = [self.match(t) for t in texts]
    found = [self.set_names.index(f) for f in found if f is not None]
    return self.set_names[min(found)] if found else None


@dataclasses.dataclass
class Report:
  """What a decontamination pass kept and dropped."""

  kept: int = 0
  dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  eval_sets: dict[str, int] = dataclasses.field(default_factory=dict)
  missing_sets: list[str] = dataclasses.field(default_factory=list)

  def as_dict(self) -> dict:
    return {"kept": self.kept, "dropped": sum(self.dropped.values()),
            "dropped_per_eval_set": dict(sorted(self.dropped.items())),
            "eval_set_sizes": self.eval_sets, "missing_eval_sets": self.missing_sets}

  def line(self) -> str:
    per_set = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
    missing = f"; not found: {', '.join(self.missing_sets)}" if self.missing_sets else ""
    return f"kept {self.kept}, dropped {sum(self.dropped.values())} (per evaluation set: {per_set}){missing}"


def evaluation_sets(data_dir: str) -> tuple[dict[str, list[str]], list[str]]:
  """({set name: texts}, [names of sets whose files are absent]) of the eval suite's data.

  SentEval sentences (mr cr subj mpqa sst2 trec; mrpc both sides), STS-B (all
  splits, both sides), SciFact (corpus titles+texts and queries), CoSQA (the
  code pool and the dev and test queries). Reads with `evaluation.formats`.
  """
  from embed_jax.evaluation import formats  # pylint: disable=import-outside-toplevel  # TF- and JAX-free.
  found, missing = {}, []
  for name in EVAL_SETS:
    texts = _read_set(formats, data_dir, name)
    if texts is None:
      missing.append(name)
    else:
      found[name] = texts
  return found, missing


def _read_set(formats, data_dir: str, name: str) -> list[str] | None:
  if name in _SENTEVAL_FILES:
    paths = [os.path.join(data_dir, "senteval", name, f) for f in _SENTEVAL_FILES[name]]
    if not all(os.path.isfile(p) for p in paths):
      return None
    return [s for p in paths for s in formats.read_labelled_sentences(p)[0]]
  if name == "mrpc":
    paths = [os.path.join(data_dir, "senteval", "mrpc", f"msr-para-{s}.tsv") for s in ("train", "val", "test")]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
      return None
    return [s for p in paths for a, b, _ in [formats.read_mrpc(p)] for s in a + b]
  if name == "stsb":
    paths = [os.path.join(data_dir, "stsb", f"sts-{s}.csv") for s in ("train", "dev", "test")]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
      return None
    return [s for p in paths for a, b, _ in [formats.read_stsb(p)] for s in a + b]
  if name == "scifact":
    folder = os.path.join(data_dir, "scifact")
    if not os.path.isfile(os.path.join(folder, "corpus.jsonl")):
      return None
    data = formats.read_beir(folder, "test")
    return list(data.corpus.values()) + list(data.queries.values())
  if name == "cosqa":
    folder = os.path.join(data_dir, "cosqa")
    if not os.path.isfile(os.path.join(folder, "code_idx_map.txt")):
      return None
    texts = []
    for split in ("test", "dev"):
      if os.path.isfile(os.path.join(folder, f"cosqa-retrieval-{split}-500.json")):
        data = formats.read_cosqa(folder, split)
        if not texts:
          texts += list(data.corpus.values())
        texts += list(data.queries.values())
    return texts
  raise ValueError(name)


def _stamp(data_dir: str) -> tuple:
  out = []
  for folder, _, files in sorted(os.walk(data_dir)):
    for f in sorted(files):
      stat = os.stat(os.path.join(folder, f))
      out.append((folder, f, stat.st_size, stat.st_mtime_ns))
  return tuple(out)


@functools.lru_cache(maxsize=4)
def _cached(data_dir: str, stamp: tuple, ngram: int, threshold: float) -> tuple[Decontaminator, tuple]:
  del stamp  # Cache key only.
  sets, missing = evaluation_sets(data_dir)
  if missing:
    log.info("decontamination against %s: no files for %s (skipped)", data_dir, ", ".join(missing))
  return Decontaminator(sets, ngram, threshold), tuple(missing)


def decontaminator(data_dir: str, ngram: int = NGRAM, threshold: float = THRESHOLD
                   ) -> tuple[Decontaminator, list[str]] | None:
  """The `Decontaminator` of the evaluation sets under `data_dir` and the missing set names.

  None (logged) when `data_dir` does not exist. Built once per process until a file changes.
  """
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if not os.path.isdir(data_dir):
    log.info("decontamination: %s does not exist; nothing to decontaminate against", data_dir)
    return None
  found, missing = _cached(data_dir, _stamp(data_dir), ngram, threshold)
  return found, list(missing)


def filter_pairs(pairs: Iterable[Sequence[str]], against: Decontaminator, missing: Sequence[str] = ()
                 ) -> tuple[list[int], Report]:
  """(indices of the pairs to keep, report); each pair is its texts (x, y, negatives...)."""
  report = Report(eval_sets=dict(against.sizes), missing_sets=list(missing))
  keep = []
  for i, texts in enumerate(pairs):
    hit = against.match_pair(texts)
    if hit is None:
      keep.append(i)
      report.kept += 1
    else:
      report.dropped[hit] += 1
  return keep, report
