"""Hard-negative mining: per pair, the corpus texts that rank high for its query but are not its positive.

For each pair (x, y) the corpus is ranked for the query x (dense: exact
inner-product top-k with `search.CorpusIndex`; or BM25). The ranking then loses
every *excluded* row: the pair's positive, every other positive of the same
query text, the query text itself, and any text equal to one of these after
normalisation (case folded, runs of whitespace as one space) — the corpus
holds each exact text once. Ranks are counted 0-based in what is
left; the window `range_min..range_max` (both inclusive) is kept, and a
candidate of the window is removed when (checked in this order, each removal
counted under the first rule that applies):

    max_score        score > max_score
    relative_margin  score > relative_margin * positive_score   (NV-Retriever's TopK-PercPos)
    absolute_margin  score > positive_score - absolute_margin   (TopK-MarginPos)

`sampling="top"` keeps the first `num_negatives` survivors; `"random"` draws
`num_negatives` of them uniformly without replacement with the generator
`numpy.random.default_rng([seed, pair_index])` (so each pair's draw depends on
nothing else: a resumed run draws what an uninterrupted one does), returned in
rank order. A pair with fewer survivors gets fewer negatives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from embed_jax.errors import UserError

SAMPLINGS = ("top", "random")
FILTERS = ("max_score", "relative_margin", "absolute_margin")


class MiningSettingsError(UserError):
  """A mining setting that cannot work; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class MiningSettings:
  """How negatives are chosen from a ranking (see the module docstring)."""
  num_negatives: int = 5
  range_min: int = 0
  range_max: int = 99
  max_score: float | None = None
  relative_margin: float | None = None
  absolute_margin: float | None = None
  sampling: str = "top"
  seed: int = 0

  def __post_init__(self):
    if self.num_negatives < 1:
      raise MiningSettingsError(f"--num_negatives must be positive, got {self.num_negatives}")
    if self.range_min < 0 or self.range_max < self.range_min:
      raise MiningSettingsError(f"--range_min {self.range_min} .. --range_max {self.range_max}: "
                                "need 0 <= range_min <= range_max")
    if self.sampling not in SAMPLINGS:
      raise MiningSettingsError(f"--sampling {self.sampling!r}: use one of {', '.join(SAMPLINGS)}")
    if self.relative_margin is not None and self.relative_margin <= 0:
      raise MiningSettingsError(f"--relative_margin must be positive (e.g. 0.95), got "
                                f"{self.relative_margin}")
    for name in ("max_score", "relative_margin", "absolute_margin"):
      value = getattr(self, name)
      if value is not None and not np.isfinite(value):
        raise MiningSettingsError(f"--{name} must be a finite number, got {value}")

  @property
  def window(self) -> int:
    """How many ranked candidates (after exclusions) the window spans."""
    return self.range_max + 1


def removed_by(score: float, positive_score: float, settings: MiningSettings) -> str | None:
  """The first filter of FILTERS that removes a candidate scoring `score`, or None."""
  if settings.max_score is not None and score > settings.max_score:
    return "max_score"
  if settings.relative_margin is not None and score > settings.relative_margin * positive_score:
    return "relative_margin"
  if settings.absolute_margin is not None and score > positive_score - settings.absolute_margin:
    return "absolute_margin"
  return None


def select(rows: Sequence[int], scores: Sequence[float], excluded: set[int], positive_score: float,
           settings: MiningSettings, pair_index: int, removed: dict[str, int] | None = None) -> list[int]:
  """The negative rows of one pair, best first.

  Args:
    rows, scores: the ranking for the pair's query, best first ([K] each; rows
      < 0 are padding and ignored). K must reach `settings.window` candidates
      beyond the excluded rows, or the corpus's end.
    excluded: rows that are never negatives (the positives, the query text).
    positive_score: the score of the pair's positive for its query.
    pair_index: seeds the random draw.
    removed: counts per filter name, incremented in place.
  """
  window = [(int(r), float(s)) for r, s in zip(rows, scores) if r >= 0 and int(r) not in excluded]
  window = window[settings.range_min:settings.window]
  kept = []
  for row, score in window:
    rule = removed_by(score, positive_score, settings)
    if rule is None:
      kept.append(row)
    elif removed is not None:
      removed[rule] = removed.get(rule, 0) + 1
  if settings.sampling == "top" or len(kept) <= settings.num_negatives:
    return kept[:settings.num_negatives]
  rng = np.random.default_rng([settings.seed, pair_index])
  picked = np.sort(rng.choice(len(kept), size=settings.num_negatives, replace=False))
  return [kept[i] for i in picked]


class DenseScorer:
  """Ranks corpus rows for queries by the inner product of their embeddings, sharded on the mesh.

  Args:
    embed: (texts, side) -> float32 [N, d] (documents are side y, queries x).
    corpus: the texts that can become negatives.
    mesh, chunk_size: for `search.CorpusIndex`.
  """

  def __init__(self, embed, corpus: Sequence[str], mesh=None, chunk_size: int = 8192):
    from embed_jax.evaluation import search  # pylint: disable=import-outside-toplevel
    self._embed = embed
    self.vectors = embed(list(corpus), "y")
    self.index = search.CorpusIndex(self.vectors, mesh, chunk_size=chunk_size)

  def rank(self, queries: Sequence[str], k: int, positive_rows: Sequence[tuple[int, int]]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores [U, k'], rows [U, k'] best first, positive scores [P]) for `queries` [U].

    `positive_rows` holds (query position, corpus row) pairs whose score is wanted.
    """
    vectors = self._embed(list(queries), "x")
    scores, rows = self.index.search(vectors, k)
    pairs = np.asarray(positive_rows, np.int64).reshape(-1, 2)
    picked = np.einsum("pd,pd->p", vectors[pairs[:, 0]], self.vectors[pairs[:, 1]])
    return scores, rows, picked


class BM25Scorer:
  """Ranks corpus rows for queries by BM25 (bm25s defaults, English stop words), ties to the lower row."""

  def __init__(self, corpus: Sequence[str]):
    import bm25s  # pylint: disable=import-outside-toplevel
    self._bm25s = bm25s
    self.retriever = bm25s.BM25()
    self.retriever.index(bm25s.tokenize(list(corpus), stopwords="en", show_progress=False),
                         show_progress=False)
    self.size = len(corpus)

  def rank(self, queries: Sequence[str], k: int, positive_rows: Sequence[tuple[int, int]]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As `DenseScorer.rank`, with BM25 scores."""
    tokens = self._bm25s.tokenize(list(queries), stopwords="en", return_ids=False,
                                  show_progress=False)
    k = min(k, self.size)
    scores = np.zeros((len(queries), k), np.float32)
    rows = np.zeros((len(queries), k), np.int64)
    wanted: dict[int, list[tuple[int, int]]] = {}
    for i, (query, row) in enumerate(positive_rows):
      wanted.setdefault(int(query), []).append((i, int(row)))
    picked = np.zeros(len(positive_rows), np.float32)
    for q, query_tokens in enumerate(tokens):
      full = np.asarray(self.retriever.get_scores(list(query_tokens)), np.float32)
      order = np.argsort(-full, kind="stable")[:k]
      rows[q], scores[q] = order, full[order]
      for i, row in wanted.get(q, ()):
        picked[i] = full[row]
    return scores, rows, picked


@dataclasses.dataclass
class MiningStats:
  """Counts over the mined pairs: how many got all negatives, and what each filter removed."""
  pairs: int = 0
  full: int = 0
  negatives: int = 0
  removed: dict[str, int] = dataclasses.field(default_factory=lambda: {f: 0 for f in FILTERS})

  def add(self, chosen: Sequence[int], settings: MiningSettings) -> None:
    self.pairs += 1
    self.negatives += len(chosen)
    self.full += len(chosen) == settings.num_negatives

  def as_dict(self) -> dict:
    return {"pairs": self.pairs, "pairs_with_all_negatives": self.full,
            "pairs_short": self.pairs - self.full, "negatives": self.negatives,
            "removed": dict(self.removed)}


def build_corpus(positives: Sequence[str], extra: Sequence[str] = ()) -> tuple[list[str], dict[str, int]]:
  """(unique texts, text -> row): `extra` (a corpus file) then the positives, first occurrence kept.

  The positives are always part of the corpus, so each pair's positive has a
  row (its score is known and it can be excluded).
  """
  row_of: dict[str, int] = {}
  for text in list(extra) + list(positives):
    row_of.setdefault(text, len(row_of))
  return list(row_of), row_of


def normalise(text: str) -> str:
  """`text` case-folded with each run of whitespace as one space, stripped: duplicates compare equal."""
  return " ".join(text.casefold().split())


def excluded_rows(queries: Sequence[str], positives: Sequence[str],
                  row_of: dict[str, int]) -> dict[str, set[int]]:
  """query text -> rows never mined for it: texts equal after `normalise` to its positives or itself."""
  rows_of_key: dict[str, set[int]] = {}
  for text, row in row_of.items():
    rows_of_key.setdefault(normalise(text), set()).add(row)
  keys: dict[str, set[str]] = {}
  for query, positive in zip(queries, positives):
    keys.setdefault(query, {normalise(query)}).add(normalise(positive))
  return {query: set().union(*(rows_of_key.get(k, set()) for k in ks)) for query, ks in keys.items()}


def mine_chunks(queries: Sequence[str], positives: Sequence[str], row_of: dict[str, int], scorer,
                settings: MiningSettings, *, start: int = 0, chunk_pairs: int = 1024,
                stats: MiningStats | None = None):
  """Yields (first pair index, [negative rows of each pair of the chunk]) for pairs start, start+1, ...

  Each chunk of `chunk_pairs` pairs ranks its distinct query texts once with
  `scorer.rank` (DenseScorer or BM25Scorer); `stats` is updated as chunks go.
  """
  excluded = excluded_rows(queries, positives, row_of)
  depth = settings.window + max(len(rows) for rows in excluded.values())
  for begin in range(start, len(queries), chunk_pairs):
    pairs = range(begin, min(begin + chunk_pairs, len(queries)))
    distinct = list(dict.fromkeys(queries[i] for i in pairs))
    position = {q: j for j, q in enumerate(distinct)}
    wanted = [(position[queries[i]], row_of[positives[i]]) for i in pairs]
    scores, rows, positive_scores = scorer.rank(distinct, depth, wanted)
    chosen = []
    for n, i in enumerate(pairs):
      j = position[queries[i]]
      negatives = select(rows[j], scores[j], excluded[queries[i]], float(positive_scores[n]),
                         settings, i, stats.removed if stats is not None else None)
      if stats is not None:
        stats.add(negatives, settings)
      chosen.append(negatives)
    yield begin, chosen
