"""Pairs from one document: neighbouring spans (cpt-text), random crops (Contriever), ICT.

Each builder maps a document string (paragraphs separated by blank lines) to a
list of (x, y) strings, or to no pair when the document is too short. Lengths
are in whitespace words (the feature converter then cuts each side to the
task's token lengths). A builder is deterministic given its seed and the
document's text: its random generator is seeded by (seed, builder, text), so
the pairs do not depend on the order, the sharding or the process that reads
the document.

From gin: `pairs = @neighbouring()`, `neighbouring.unit = 'words'`, ...
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import gin
import numpy as np

from embed_jax.data.documents import paragraphs
from embed_jax.errors import ConfigError

Pairs = list[tuple[str, str]]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _words(text: str) -> list[str]:
  return text.split()


def sentences(text: str) -> list[str]:
  """The sentences of a document: split after . ! or ? followed by space, and at paragraph ends."""
  return [s for p in paragraphs(text) for s in _SENTENCE_END.split(p) if s.strip()]


class PairBuilder:
  """Base: `build(text, seed)` -> the document's pairs ([] when it is too short)."""

  name = "pairs"
  min_document_words: int = 0

  def rng(self, text: str, seed: int) -> np.random.Generator:
    """The document's generator: seeded by (seed, builder name, crc32 of the text)."""
    return np.random.default_rng([int(seed), zlib.crc32(self.name.encode()),
                                  zlib.crc32(text.encode("utf-8"))])

  def too_short(self, text: str) -> bool:
    return len(_words(text)) < self.min_document_words

  def build(self, text: str, seed: int) -> Pairs:
    if self.too_short(text):
      return []
    return self._build(text, self.rng(text, seed))

  def _build(self, text: str, rng: np.random.Generator) -> Pairs:
    raise NotImplementedError


def _check_positive(owner: str, **values) -> None:
  for key, value in values.items():
    if value < 1:
      raise ConfigError(f"{owner}.{key} must be at least 1, got {value}")


@gin.configurable("neighbouring")
@dataclasses.dataclass(frozen=True)
class Neighbouring(PairBuilder):
  """cpt-text: x and y are adjacent spans of one document.

  Attributes:
    unit: 'paragraph': each pair of consecutive paragraphs (both at least
      `min_span_words` long), x cut to its last `x_words` words and y to its
      first `y_words`, so they stay adjacent. 'words': consecutive windows of
      x_words then y_words words, from a random offset; a document shorter
      than one window is split in the middle.
    x_words, y_words: most words of each side.
    min_span_words: paragraphs shorter than this pair with nothing.
    min_document_words: shorter documents are skipped (and counted).
    max_pairs_per_document: keep at most this many (a seeded random subset); 0 = all.
  """

  unit: str = "paragraph"
  x_words: int = 128
  y_words: int = 128
  min_span_words: int = 5
  min_document_words: int = 16
  max_pairs_per_document: int = 0
  name = "neighbouring"

  def __post_init__(self):
    if self.unit not in ("paragraph", "words"):
      raise ConfigError(f"neighbouring.unit must be 'paragraph' or 'words', got {self.unit!r}")
    _check_positive("neighbouring", x_words=self.x_words, y_words=self.y_words,
                    min_span_words=self.min_span_words)

  def _build(self, text, rng):
    if self.unit == "paragraph":
      spans = [_words(p) for p in paragraphs(text)]
      pairs = [(" ".join(a[-self.x_words:]), " ".join(b[:self.y_words]))
               for a, b in zip(spans, spans[1:])
               if len(a) >= self.min_span_words and len(b) >= self.min_span_words]
    else:
      words = _words(text)
      window = self.x_words + self.y_words
      count = len(words) // window
      if count == 0:
        half = len(words) // 2
        if half < self.min_span_words:
          return []
        return self._subset([(" ".join(words[:half][-self.x_words:]),
                              " ".join(words[half:][:self.y_words]))], rng)
      offset = int(rng.integers(0, len(words) - count * window + 1))
      starts = [offset + k * window for k in range(count)]
      pairs = [(" ".join(words[s:s + self.x_words]), " ".join(words[s + self.x_words:s + window]))
               for s in starts]
    return self._subset(pairs, rng)

  def _subset(self, pairs: Pairs, rng) -> Pairs:
    if self.max_pairs_per_document and len(pairs) > self.max_pairs_per_document:
      keep = np.sort(rng.choice(len(pairs), self.max_pairs_per_document, replace=False))
      pairs = [pairs[i] for i in keep]
    return pairs


@gin.configurable("cropping")
@dataclasses.dataclass(frozen=True)
class Cropping(PairBuilder):
  """Contriever: x and y are two independent random crops of one document.

  Each crop is a contiguous run of round(r * n) words of the n-word document,
  r drawn uniformly from [min_ratio, max_ratio] for each crop, at least
  `min_crop_words` and at most x_words (y_words) words, at a uniform start.

  Attributes:
    min_ratio, max_ratio: the crop ratio range, 0 < min_ratio <= max_ratio <= 1.
    x_words, y_words: most words of each crop.
    min_crop_words: fewest words of a crop.
    pairs_per_document: independent pairs drawn from each document.
    min_document_words: shorter documents are skipped (and counted).
  """

  min_ratio: float = 0.1
  max_ratio: float = 0.5
  x_words: int = 128
  y_words: int = 128
  min_crop_words: int = 5
  pairs_per_document: int = 1
  min_document_words: int = 16
  name = "cropping"

  def __post_init__(self):
    if not 0.0 < self.min_ratio <= self.max_ratio <= 1.0:
      raise ConfigError(f"cropping needs 0 < min_ratio <= max_ratio <= 1, got "
                        f"{self.min_ratio}, {self.max_ratio}")
    _check_positive("cropping", x_words=self.x_words, y_words=self.y_words,
                    min_crop_words=self.min_crop_words, pairs_per_document=self.pairs_per_document)

  def _crop(self, words: list[str], cap: int, rng) -> str:
    n = len(words)
    length = int(round(rng.uniform(self.min_ratio, self.max_ratio) * n))
    length = max(1, min(max(length, self.min_crop_words), cap, n))
    start = int(rng.integers(0, n - length + 1))
    return " ".join(words[start:start + length])

  def _build(self, text, rng):
    words = _words(text)
    return [(self._crop(words, self.x_words, rng), self._crop(words, self.y_words, rng))
            for _ in range(self.pairs_per_document)]


@gin.configurable("ict")
@dataclasses.dataclass(frozen=True)
class InverseCloze(PairBuilder):
  """Inverse cloze task: x is one sentence, y its passage without it.

  The document's sentences are cut into consecutive passages of
  `passage_sentences`; each passage of at least `min_sentences` gives one pair:
  a uniformly chosen sentence as x, the passage's other sentences (in order)
  as y, or, with probability `keep_rate`, the whole passage, sentence included
  (ORQA keeps it 10% of the time so the model still learns word matching).

  Attributes:
    passage_sentences, min_sentences: passage size and the fewest sentences of one.
    keep_rate: probability that y keeps the sentence.
    x_words, y_words: most words of each side (y is cut at its end).
    min_document_words: shorter documents are skipped (and counted).
  """

  passage_sentences: int = 6
  min_sentences: int = 3
  keep_rate: float = 0.1
  x_words: int = 64
  y_words: int = 256
  min_document_words: int = 16
  name = "ict"

  def __post_init__(self):
    if not 0.0 <= self.keep_rate <= 1.0:
      raise ConfigError(f"ict.keep_rate must be in [0, 1], got {self.keep_rate}")
    _check_positive("ict", passage_sentences=self.passage_sentences, x_words=self.x_words,
                    y_words=self.y_words)
    if not 2 <= self.min_sentences <= self.passage_sentences:
      raise ConfigError(f"ict needs 2 <= min_sentences <= passage_sentences, got "
                        f"{self.min_sentences}, {self.passage_sentences}")

  def _build(self, text, rng):
    found = sentences(text)
    pairs = []
    for start in range(0, len(found), self.passage_sentences):
      passage = found[start:start + self.passage_sentences]
      if len(passage) < self.min_sentences:
        continue
      chosen = int(rng.integers(len(passage)))
      keep = bool(rng.random() < self.keep_rate)
      rest = passage if keep else passage[:chosen] + passage[chosen + 1:]
      pairs.append((" ".join(_words(passage[chosen])[:self.x_words]),
                    " ".join(_words(" ".join(rest))[:self.y_words])))
    return pairs
