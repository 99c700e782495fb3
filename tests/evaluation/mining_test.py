"""Hard-negative mining equals a brute-force numpy selection, on 1 and 8 devices; `embed-jax mine` end to end.

The oracle scores every (query, document) pair in float64, sorts each row in
full, and applies the documented rules itself; the implementation ranks with
the sharded top-k (`CorpusIndex`) and its own selection code.
"""

import json

import gin
import jax
import numpy as np
import pytest

from embed_jax import embedding, main, partitioning
from embed_jax.checkpoints import model_dir
from embed_jax.data import pair_files
from embed_jax.errors import UserError
from embed_jax.evaluation import mining
from embed_jax.models import BertConfig, DualEncoderConfig, init_dual_encoder


def _oracle(scores, excluded, positive_scores, settings):
  """Negative rows per pair from a full [pairs, N] float64 score matrix, following the module's rules."""
  out, removed = [], {f: 0 for f in mining.FILTERS}
  for i, row in enumerate(scores):
    ranked = [j for j in np.argsort(-row, kind="stable") if j not in excluded[i]]
    window = ranked[settings.range_min:settings.range_max + 1]
    kept = []
    for j in window:
      s, p = row[j], positive_scores[i]
      if settings.max_score is not None and s > settings.max_score:
        removed["max_score"] += 1
      elif settings.relative_margin is not None and s > settings.relative_margin * p:
        removed["relative_margin"] += 1
      elif settings.absolute_margin is not None and s > p - settings.absolute_margin:
        removed["absolute_margin"] += 1
      else:
        kept.append(int(j))
    if settings.sampling == "random" and len(kept) > settings.num_negatives:
      draw = np.random.default_rng([settings.seed, i]).choice(len(kept), settings.num_negatives,
                                                              replace=False)
      kept = [kept[t] for t in sorted(draw)]
    out.append(kept[:settings.num_negatives])
  return out, removed


def _toy_pairs(rng, num_pairs=23, num_texts=40, dim=12):
  """Texts with random unit vectors; pairs with a repeated query, a shared positive, a query that is a document."""
  texts = [f"text {i}" for i in range(num_texts)]
  vectors = rng.normal(size=(num_texts, dim))
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  queries = [texts[i] for i in rng.integers(0, num_texts, num_pairs)]
  positives = [texts[i] for i in rng.integers(0, num_texts, num_pairs)]
  queries[5] = queries[2]          # one query with two positives
  positives[7] = positives[3]      # one positive of two queries
  queries[9] = positives[11]       # a query that is also a document
  texts.append(f" {positives[0].upper()}  ")  # a duplicate of a positive but for case and spaces
  # ... embedded as pair 0's query is, so it would rank first for it if it were not excluded.
  vectors = np.concatenate([vectors, vectors[texts.index(queries[0]):][:1]])
  return texts, vectors.astype(np.float32), queries, positives


SETTINGS = [
    mining.MiningSettings(num_negatives=4, range_min=0, range_max=12, relative_margin=0.9),
    mining.MiningSettings(num_negatives=3, range_min=2, range_max=15, absolute_margin=0.05,
                          max_score=0.6, sampling="random", seed=3),
]


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("settings", SETTINGS, ids=["top_relative", "random_absolute_max"])
def test_dense_mining_equals_numpy_selection(devices, settings):
  texts, vectors, queries, positives = _toy_pairs(np.random.default_rng(0))
  lookup = dict(zip(texts, vectors))
  embed = lambda batch, side: np.stack([lookup[t] for t in batch])  # noqa: E731
  extra = [texts[i] for i in range(0, 40, 3)] + [texts[-1]]  # a --corpus file; others only as positives
  corpus, row_of = mining.build_corpus(positives, extra)
  mesh = partitioning.create_mesh(devices=jax.devices()[:devices])
  scorer = mining.DenseScorer(embed, corpus, mesh, chunk_size=4)
  stats = mining.MiningStats()
  got = [rows for _, chunk in mining.mine_chunks(queries, positives, row_of, scorer, settings,
                                                 chunk_pairs=5, stats=stats) for rows in chunk]

  corpus_vectors = np.stack([lookup[t] for t in corpus]).astype(np.float64)
  query_vectors = np.stack([lookup[q] for q in queries]).astype(np.float64)
  scores = query_vectors @ corpus_vectors.T
  same = lambda a, b: a.lower().split() == b.lower().split()  # noqa: E731
  excluded = [{r for t, r in row_of.items() if same(t, q) or any(
      same(t, p) for q2, p in zip(queries, positives) if q2 == q)} for q in queries]
  assert row_of[texts[-1]] in excluded[0]
  positive_scores = [scores[i, row_of[p]] for i, p in enumerate(positives)]
  expected, removed = _oracle(scores, excluded, positive_scores, settings)
  assert got == expected
  assert stats.removed == removed and sum(removed.values()) > 0  # the filters did act
  assert stats.pairs == len(queries)
  assert stats.full == sum(len(e) == settings.num_negatives for e in expected)
  for i, rows in enumerate(got):
    assert not set(rows) & excluded[i] and len(set(rows)) == len(rows)


def test_bm25_mining_equals_selection_on_full_scores():
  import bm25s  # pylint: disable=import-outside-toplevel
  words = ["cat", "dog", "json", "sort", "list", "http", "file", "date", "thread", "socket"]
  rng = np.random.default_rng(1)
  documents = [" ".join(rng.choice(words, 4)) + f" doc{i}" for i in range(30)]
  queries = [" ".join(rng.choice(words, 2)) for _ in range(12)]
  positives = [documents[i] for i in rng.integers(0, 30, 12)]
  corpus, row_of = mining.build_corpus(positives, documents)
  settings = mining.MiningSettings(num_negatives=3, range_max=9, relative_margin=1.0)
  got = [rows for _, chunk in mining.mine_chunks(queries, positives, row_of,
                                                 mining.BM25Scorer(corpus), settings, chunk_pairs=4)
         for rows in chunk]
  retriever = bm25s.BM25()
  retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
  tokens = bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
  scores = np.stack([retriever.get_scores(list(t)) for t in tokens]).astype(np.float32)
  excluded = [{row_of[p] for q2, p in zip(queries, positives) if q2 == q} for q in queries]
  expected, _ = _oracle(scores, excluded, [scores[i, row_of[p]] for i, p in enumerate(positives)],
                        settings)
  assert got == expected and any(got)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_negatives=0), "--num_negatives must be positive"),
    (dict(range_min=5, range_max=2), "--range_min 5 .. --range_max 2"),
    (dict(sampling="best"), "--sampling 'best'"),
    (dict(relative_margin=-1.0), "--relative_margin must be positive"),
    (dict(max_score=float("nan")), "--max_score must be a finite number"),
])
def test_bad_settings_are_named(kwargs, message):
  with pytest.raises(mining.MiningSettingsError, match=message):
    mining.MiningSettings(**kwargs)


# --- the command line ------------------------------------------------------------------------

def _main(argv):
  gin.clear_config(clear_constants=True)
  return main.main(argv)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, minilm_tokenizer_json):
  config = DualEncoderConfig(encoder=BertConfig(d_model=32, num_layers=1, num_heads=2, d_ff=64,
                                                max_length=32), pooling="mean")
  _, params = init_dual_encoder(config, jax.random.key(0))
  templates = {"x_prefix": ("[CLS]",), "x_suffix": ("[SEP]",), "y_prefix": ("[CLS]",),
               "y_suffix": ("[SEP]",)}
  return str(model_dir.save_model(tmp_path_factory.mktemp("tiny") / "model", config, params,
                                  tokenizer_path=minilm_tokenizer_json, templates=templates))


TOPICS = ["cats", "dogs", "parsing json", "sorting lists", "http servers", "regular expressions",
          "dates", "threads", "sockets", "files", "unicode", "sqlite"]


def _pair_file(path):
  pairs = [{"query": f"how do I use {t}", "positive": f"a guide to {t}", "id": i}
           for i, t in enumerate(TOPICS)]
  path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
  return pairs


def test_mine_cli_dense_writes_what_the_trainer_reads(tmp_path, tiny_model_dir):
  pairs = _pair_file(tmp_path / "pairs.jsonl")
  out = tmp_path / "mined.jsonl"
  assert _main(["mine", "--model", tiny_model_dir, "--input", str(tmp_path / "pairs.jsonl"),
                "--output", str(out), "--x_field", "query", "--y_field", "positive",
                "--num_negatives", "3", "--range_min", "1", "--chunk_pairs", "5",
                "--no_progress"]) == 0
  mined = pair_files.read_pairs(str(out), pair_files.PairFields("query", "positive", ("negatives",)))
  assert mined.x == [p["query"] for p in pairs] and mined.y == [p["positive"] for p in pairs]
  model = model_dir.load_model(tiny_model_dir)
  documents = [p["positive"] for p in pairs]
  scores = (embedding.embed_with_model(model, mined.x, side="x")
            @ embedding.embed_with_model(model, documents, side="y").T)
  for i, negatives in enumerate(mined.negatives):
    ranked = [documents[j] for j in np.argsort(-scores[i], kind="stable") if j != i]
    assert negatives == ranked[1:4]
  assert not (tmp_path / "mined.jsonl.partial").exists()


def test_mine_cli_resumes_after_a_kill(tmp_path, monkeypatch):
  from embed_jax.cli import mine as mine_cli  # pylint: disable=import-outside-toplevel
  _pair_file(tmp_path / "pairs.jsonl")
  (tmp_path / "corpus.txt").write_text("".join(f"notes on {t} and more {t}\n" for t in TOPICS))
  args = ["mine", "--retriever", "bm25", "--input", str(tmp_path / "pairs.jsonl"), "--x_field",
          "query", "--y_field", "positive", "--corpus", str(tmp_path / "corpus.txt"),
          "--num_negatives", "2", "--sampling", "random", "--chunk_pairs", "5", "--no_progress"]
  assert _main(args + ["--output", str(tmp_path / "whole.jsonl")]) == 0

  original, calls = mine_cli._write_progress, []

  def killed_after_one_chunk(*a):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt  # the second chunk is written but not recorded: it is redone
    original(*a)
  monkeypatch.setattr(mine_cli, "_write_progress", killed_after_one_chunk)
  with pytest.raises(KeyboardInterrupt):
    _main(args + ["--output", str(tmp_path / "resumed.jsonl")])
  assert (tmp_path / "resumed.jsonl.partial").exists() and not (tmp_path / "resumed.jsonl").exists()
  monkeypatch.setattr(mine_cli, "_write_progress", original)
  assert _main(args + ["--output", str(tmp_path / "resumed.jsonl")]) == 0
  whole = (tmp_path / "whole.jsonl").read_text()
  assert (tmp_path / "resumed.jsonl").read_text() == whole
  assert any(json.loads(line)["negatives"] for line in whole.splitlines())


def test_mine_cli_bad_input_is_one_line(tmp_path):
  (tmp_path / "pairs.jsonl").write_text('{"x": "a", "y": "b"}\n{"x": "c"}\n')
  base = ["mine", "--input", str(tmp_path / "pairs.jsonl"), "--output", str(tmp_path / "o.jsonl"),
          "--no_progress"]
  with pytest.raises(UserError, match=r"pairs.jsonl:2: missing field 'y'"):
    _main(base + ["--retriever", "bm25"])
  (tmp_path / "pairs.jsonl").write_text('{"x": "a", "y": "b"}\n')
  with pytest.raises(UserError, match="--retriever dense needs --model"):
    _main(base)
  with pytest.raises(UserError, match="--range_min 3 .. --range_max 1"):
    _main(base + ["--retriever", "bm25", "--range_min", "3", "--range_max", "1"])
