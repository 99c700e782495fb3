"""The evaluation tasks by name: where their files live under --data_dir and how each is scored.

    mr cr subj mpqa      linear probe, 10-fold CV          senteval/<task>/...
    sst2 trec mrpc       linear probe on their splits       senteval/<task>/...
    stsb                 Spearman of cosine vs gold (test)  stsb/sts-test.csv
    cosqa                code search (test queries)         cosqa/
    stdlib_code          code search, built-in test split   (no files: the local stdlib)
    <folder>             BEIR retrieval (e.g. scifact)      <folder>/corpus.jsonl, queries.jsonl, qrels/test.tsv

Every task runner takes (embed, data_dir, mesh, limit) and returns a dict of
results; `limit` (for smoke runs) keeps a seeded random subset of at most that
many examples per split (queries, for retrieval: the corpus stays whole).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np
from jax.sharding import Mesh

from embed_jax import paths
from embed_jax.data import stdlib_corpus  # TF-free; imported early to register its gin knobs
from embed_jax.evaluation import formats, linear_probe, retrieval
from embed_jax.evaluation.metrics import spearman
from embed_jax.evaluation.retrieval import EmbedFn

BEIR_METRICS = ("ndcg@10", "mrr@10", "recall@100")
CODE_METRICS = ("mrr@10", "recall@1", "recall@10")
SUBSET_SEED = 0


@dataclasses.dataclass(frozen=True)
class Task:
  """A named evaluation: its kind, the metric a report leads with, and its runner."""
  name: str
  kind: str  # "probe" | "sts" | "retrieval" | "code_search"
  headline: str
  run: Callable[[EmbedFn, str, Mesh | None, int | None], dict]


def _subset(n: int, limit: int | None) -> np.ndarray:
  if limit is None or limit >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(SUBSET_SEED).choice(n, limit, replace=False))


def _take(rows: np.ndarray, *columns: Sequence) -> list[list]:
  return [[column[i] for i in rows] for column in columns]


# --- linear probes ---------------------------------------------------------------------------

_CV_FILES = {"mr": "rt-polarity.all", "cr": "custrev.all", "subj": "subj.all", "mpqa": "mpqa.all"}
_SPLIT_FILES = {"sst2": ("stsa.binary.{}", ("train", "dev", "test")),
                "trec": ("TREC.{}.all", ("train", None, "test"))}


def _cv_probe(name: str):
  def run(embed: EmbedFn, data_dir: str, mesh: Mesh | None, limit: int | None) -> dict:
    del mesh
    sentences, labels = formats.read_labelled_sentences(
        os.path.join(data_dir, "senteval", name, _CV_FILES[name]))
    sentences, labels = _take(_subset(len(labels), limit), sentences, labels)
    return linear_probe.cross_validation_accuracy(embed(sentences, "x"), labels)
  return run


def _split_probe(name: str):
  pattern, splits = _SPLIT_FILES[name]

  def run(embed: EmbedFn, data_dir: str, mesh: Mesh | None, limit: int | None) -> dict:
    del mesh
    data = {}
    for role, split in zip(("train", "dev", "test"), splits):
      if split is not None:
        sentences, labels = formats.read_labelled_sentences(
            os.path.join(data_dir, "senteval", name, pattern.format(split)))
        sentences, labels = _take(_subset(len(labels), limit), sentences, labels)
        data[role] = (embed(sentences, "x"), labels)
    return linear_probe.split_accuracy(data["train"], data["test"], data.get("dev"))
  return run


def _mrpc(embed: EmbedFn, data_dir: str, mesh: Mesh | None, limit: int | None) -> dict:
  del mesh
  data = {}
  for role, split in (("train", "train"), ("dev", "val"), ("test", "test")):
    first, second, labels = formats.read_mrpc(
        os.path.join(data_dir, "senteval", "mrpc", f"msr-para-{split}.tsv"))
    first, second, labels = _take(_subset(len(labels), limit), first, second, labels)
    data[role] = (linear_probe.pair_features(embed(first, "x"), embed(second, "x")), labels)
  return linear_probe.split_accuracy(data["train"], data["test"], data["dev"])


# --- STS -------------------------------------------------------------------------------------

def cosine(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity of two [N, d] arrays."""
  norms = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
  return np.sum(u * v, axis=1) / np.maximum(norms, 1e-12)


def _stsb(embed: EmbedFn, data_dir: str, mesh: Mesh | None, limit: int | None) -> dict:
  del mesh
  first, second, gold = formats.read_stsb(os.path.join(data_dir, "stsb", "sts-test.csv"))
  first, second, gold = _take(_subset(len(gold), limit), first, second, gold)
  predicted = cosine(embed(first, "x"), embed(second, "x"))
  return {"spearman": spearman(predicted, gold), "num_pairs": len(gold)}


# --- retrieval and code search ---------------------------------------------------------------

def _limit_queries(data: formats.RetrievalData, limit: int | None) -> formats.RetrievalData:
  keep = [list(data.queries)[i] for i in _subset(len(data.queries), limit)]
  return formats.RetrievalData(data.corpus, {q: data.queries[q] for q in keep},
                               {q: data.qrels[q] for q in keep})


def _retrieval(reader: Callable[[str], formats.RetrievalData], metrics: Sequence[str]):
  def run(embed: EmbedFn, data_dir: str, mesh: Mesh | None, limit: int | None) -> dict:
    return retrieval.evaluate_retrieval(embed, _limit_queries(reader(data_dir), limit), metrics,
                                        mesh=mesh)
  return run


def _stdlib_code_data(data_dir: str) -> formats.RetrievalData:
  del data_dir  # Built in: extracted from the running interpreter's standard library.
  return formats.read_pair_jsonl_as_retrieval(stdlib_corpus.corpus_file("stdlib_code", "test"))


BUILT_IN: dict[str, Task] = {
    **{name: Task(name, "probe", "accuracy", _cv_probe(name)) for name in _CV_FILES},
    **{name: Task(name, "probe", "accuracy", _split_probe(name)) for name in _SPLIT_FILES},
    "mrpc": Task("mrpc", "probe", "accuracy", _mrpc),
    "stsb": Task("stsb", "sts", "spearman", _stsb),
    "cosqa": Task("cosqa", "code_search", "mrr@10", _retrieval(
        lambda d: formats.read_cosqa(os.path.join(d, "cosqa")), CODE_METRICS)),
    "stdlib_code": Task("stdlib_code", "code_search", "mrr@10",
                        _retrieval(_stdlib_code_data, CODE_METRICS)),
}


def get_task(name: str, data_dir: str) -> Task:
  """The task called `name`: a built-in one, else a BEIR-format folder `data_dir/name`."""
  if name in BUILT_IN:
    return BUILT_IN[name]
  folder = os.path.join(data_dir, name)
  if paths.path(os.path.join(folder, "corpus.jsonl")).is_file():
    return Task(name, "retrieval", "ndcg@10",
                _retrieval(lambda d: formats.read_beir(os.path.join(d, name)), BEIR_METRICS))
  raise ValueError(f"unknown task {name!r}: not one of {', '.join(BUILT_IN)}, and "
                   f"{folder} is not a BEIR-format folder (no corpus.jsonl)")
