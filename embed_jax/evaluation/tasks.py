"""The evaluation tasks by name: where their files live under --data_dir and how each is scored.

    mr cr subj mpqa      linear probe, 10-fold CV          senteval/<task>/...
    sst2 trec mrpc       linear probe on their splits       senteval/<task>/...
    stsb                 Spearman of cosine vs gold         stsb/sts-<split>.csv
    sts:PATH             the STS protocol on any folder     PATH/sts-<split>.csv (PATH as given, else
                         in the STS-B layout                under --data_dir)
    cosqa                code search (test queries)         cosqa/
    stdlib_code          code search, built-in test split   (no files: the local stdlib)
    <folder>             BEIR retrieval (e.g. scifact)      <folder>/corpus.jsonl, queries.jsonl,
                                                            qrels/<split>.tsv
    <folder>             STS, when it holds sts-<split>.csv <folder>/sts-<split>.csv

`split` ("test" unless --split says "dev") chooses the STS file and the BEIR
qrels; the probes keep their own protocol and CoSQA its test queries. Every
task runner takes (embed, data_dir, mesh, limit) and returns a dict of
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


def sts_file(folder: str, split: str = "test") -> str:
  """The STS-B-layout file of `split` in `folder`: sts-<split>.csv."""
  return os.path.join(folder, f"sts-{split}.csv")


def _sts(folder_of: Callable[[str], str], split: str):
  """The STS protocol (Spearman of cosine against gold) on sts-<split>.csv of a folder."""
  def run(embed: EmbedFn, data_dir: str, mesh: Mesh | None, limit: int | None) -> dict:
    del mesh
    first, second, gold = formats.read_stsb(sts_file(folder_of(data_dir), split))
    first, second, gold = _take(_subset(len(gold), limit), first, second, gold)
    predicted = cosine(embed(first, "x"), embed(second, "x"))
    return {"spearman": spearman(predicted, gold), "num_pairs": len(gold), "split": split}
  return run


# --- retrieval and code search ---------------------------------------------------------------

def _limit_queries(data: formats.RetrievalData, limit: int | None) -> formats.RetrievalData:
  keep = [list(data.queries)[i] for i in _subset(len(data.queries), limit)]
  return formats.RetrievalData(data.corpus, {q: data.queries[q] for q in keep},
                               {q: data.qrels[q] for q in keep})


def _retrieval(reader: Callable[[str], formats.RetrievalData], metrics: Sequence[str],
               split: str | None = None):
  def run(embed: EmbedFn, data_dir: str, mesh: Mesh | None, limit: int | None) -> dict:
    result = retrieval.evaluate_retrieval(embed, _limit_queries(reader(data_dir), limit), metrics,
                                          mesh=mesh)
    if split is not None:
      result["split"] = split
    return result
  return run


def _stdlib_code_data(data_dir: str) -> formats.RetrievalData:
  del data_dir  # Built in: extracted from the running interpreter's standard library.
  return formats.read_pair_jsonl_as_retrieval(stdlib_corpus.corpus_file("stdlib_code", "test"))


SPLITS = ("test", "dev")
STS_PREFIX = "sts:"

BUILT_IN: dict[str, Task] = {
    **{name: Task(name, "probe", "accuracy", _cv_probe(name)) for name in _CV_FILES},
    **{name: Task(name, "probe", "accuracy", _split_probe(name)) for name in _SPLIT_FILES},
    "mrpc": Task("mrpc", "probe", "accuracy", _mrpc),
    "stsb": Task("stsb", "sts", "spearman", _sts(lambda d: os.path.join(d, "stsb"), "test")),
    "cosqa": Task("cosqa", "code_search", "mrr@10", _retrieval(
        lambda d: formats.read_cosqa(os.path.join(d, "cosqa")), CODE_METRICS)),
    "stdlib_code": Task("stdlib_code", "code_search", "mrr@10",
                        _retrieval(_stdlib_code_data, CODE_METRICS)),
}


def _sts_folder(path: str, data_dir: str) -> str:
  """`path` where it is a folder, else `data_dir/path`."""
  return path if os.path.isdir(path) else os.path.join(data_dir, path)


def get_task(name: str, data_dir: str, split: str = "test") -> Task:
  """The task called `name`.

  A built-in one; `sts:PATH` (the STS protocol on a folder in the STS-B
  layout); else the folder `data_dir/name`: BEIR retrieval when it holds
  corpus.jsonl, STS when it holds sts-<split>.csv.

  Raises:
    ValueError: for an unknown name, a folder of neither layout or a split
      other than test/dev, naming what was looked for.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
  if name == "stsb":
    return Task(name, "sts", "spearman", _sts(lambda d: os.path.join(d, "stsb"), split))
  if name in BUILT_IN:
    return BUILT_IN[name]
  if name.startswith(STS_PREFIX):
    path = name[len(STS_PREFIX):]
    if not path:
      raise ValueError(f"task {name!r}: give a folder, as sts:PATH")
    if not os.path.isfile(sts_file(_sts_folder(path, data_dir), split)):
      raise ValueError(f"task {name!r}: no sts-{split}.csv in {path} (nor under {data_dir}); "
                       "an STS-B-layout folder holds sts-test.csv (and sts-dev.csv)")
    return Task(name, "sts", "spearman", _sts(lambda d: _sts_folder(path, d), split))
  folder = os.path.join(data_dir, name)
  if paths.path(os.path.join(folder, "corpus.jsonl")).is_file():
    return Task(name, "retrieval", "ndcg@10", _retrieval(
        lambda d: formats.read_beir(os.path.join(d, name), split), BEIR_METRICS, split))
  if paths.path(sts_file(folder, split)).is_file():
    return Task(name, "sts", "spearman", _sts(lambda d: os.path.join(d, name), split))
  raise ValueError(f"unknown task {name!r}: not one of {', '.join(BUILT_IN)} or sts:PATH, and "
                   f"{folder} is neither a BEIR-format folder (corpus.jsonl) nor an STS-B-layout "
                   f"folder (sts-{split}.csv)")
