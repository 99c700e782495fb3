"""Pair tasks over documents: text files, JSONL, a tfds dataset built here; gin, seeds, shards, counts."""

import json

import gin
import numpy as np
import pytest
import seqio

from embed_jax.data import document_tasks, documents, pair_builders
from embed_jax.data.pipeline import DataConfig, PairBatchIterator
from embed_jax.errors import ConfigError


def doc_text(k, paragraphs=4, words=12):
  return "\n\n".join(" ".join(f"d{k}p{p}w{i}" for i in range(words)) for p in range(paragraphs))


@pytest.fixture
def vocab(sentencepiece_path):
  gin.bind_parameter("text_encoder.sentencepiece_model", sentencepiece_path)


def pairs_of(task, split="train", shard=0, num_shards=1):
  ds = seqio.get_mixture_or_task(task).source.get_dataset(split, shuffle=False,
                                                          shard_info=seqio.ShardInfo(shard, num_shards))
  for step in seqio.get_mixture_or_task(task).preprocessors[:-2]:
    ds = step(ds) if not hasattr(step, "keywords") else step(ds)
  return [(e["x"].decode(), e["y"].decode()) for e in ds.as_numpy_iterator()]


def expected_pairs(texts, builder, seed=0):
  return [p for t in texts for p in builder.build(t, seed)]


def test_text_files_one_document_per_file(tmp_path, vocab):
  texts = [doc_text(k) for k in range(5)]
  for k, t in enumerate(texts):
    (tmp_path / f"doc{k}.txt").write_text(t.replace("\n\n", "\n\n\n  ") + "\n")
  (tmp_path / "short.txt").write_text("too short to use\n")
  name = document_tasks.document_task(name="docs_files", train=str(tmp_path / "*.txt"))
  got = pairs_of(name)
  assert got == expected_pairs(texts, pair_builders.Neighbouring())
  assert len(got) == 5 * 3
  counts = document_tasks.counts(name)
  assert counts["documents"] == 6 and counts["too_short"] == 1 and counts["pairs"] == 15
  # Shards over files are disjoint and together the whole.
  shards = [pairs_of(name, shard=v, num_shards=3) for v in range(3)]
  assert sorted(p for s in shards for p in s) == sorted(got)


def test_blank_line_separated_documents_and_batches(tmp_path, vocab):
  texts = [doc_text(k, paragraphs=3) for k in range(8)]
  # One document per block; its paragraphs are its lines.
  (tmp_path / "docs.txt").write_text("\n\n".join(t.replace("\n\n", "\n") for t in texts) + "\n")
  name = document_tasks.document_task(name="docs_blocks", train=str(tmp_path / "docs.txt"),
                                      separator="blank_line", pairs=pair_builders.Cropping())
  assert pairs_of(name) == expected_pairs(texts, pair_builders.Cropping())
  # Fewer files than shards: documents alternate between the shards.
  even, odd = pairs_of(name, shard=0, num_shards=2), pairs_of(name, shard=1, num_shards=2)
  assert even == expected_pairs(texts[0::2], pair_builders.Cropping())
  assert odd == expected_pairs(texts[1::2], pair_builders.Cropping())
  batches = PairBatchIterator(DataConfig(task=name, batch_size=4, x_length=24, y_length=24),
                              process_index=0, process_count=1)
  assert next(batches)["x_tokens"].shape == (4, 24)


def test_jsonl_documents_with_titles_from_gin(tmp_path, vocab):
  path = tmp_path / "wiki.jsonl"
  records = [{"title": f"Title number {k} of the wiki", "body": doc_text(k, 2)} for k in range(4)]
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  gin.parse_config(f"""
    wiki/document_task.name = 'wiki_ict'
    wiki/document_task.train = '{path}'
    wiki/document_task.text_field = 'body'
    wiki/document_task.title_field = 'title'
    wiki/document_task.pairs = @ict()
    wiki/document_task.seed = 7
    ict.keep_rate = 0.0
    ict.min_sentences = 2
    ict.passage_sentences = 3
  """)
  name = gin.get_configurable("wiki/document_task")()
  texts = [documents.join_paragraphs([r["title"]] + r["body"].split("\n\n")) for r in records]
  builder = pair_builders.InverseCloze(keep_rate=0.0, min_sentences=2, passage_sentences=3)
  got = pairs_of(name)
  assert got == expected_pairs(texts, builder, seed=7) and got != expected_pairs(texts, builder, seed=8)
  assert any(x.startswith("Title number") for x, _ in got) or any("Title number" in y for _, y in got)


def test_a_tfds_dataset_built_on_disk(tmp_path, vocab):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  texts = [doc_text(k, paragraphs=3) for k in range(6)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name="embed_jax_test_docs", version="1.0.0", data_dir=str(tmp_path),
      features=tfds.features.FeaturesDict({"content": tfds.features.Text(), "n": np.int64}),
      split_datasets={"train": [(k, {"content": t, "n": k}) for k, t in enumerate(texts)]},
      disable_shuffling=True)
  name = document_tasks.tfds_task(name="tfds_docs", tfds_name="embed_jax_test_docs:1.0.0",
                                  data_dir=str(tmp_path), text_feature="content")
  assert pairs_of(name) == expected_pairs(texts, pair_builders.Neighbouring())
  with pytest.raises(ConfigError, match="no feature 'text'"):
    document_tasks.tfds_task(name="t2", tfds_name="embed_jax_test_docs:1.0.0", data_dir=str(tmp_path))
  with pytest.raises(ConfigError, match="feature 'n' is"):
    document_tasks.tfds_task(name="t2", tfds_name="embed_jax_test_docs:1.0.0", data_dir=str(tmp_path),
                             text_feature="n")
  with pytest.raises(ConfigError, match="not_a_dataset_here"):
    document_tasks.tfds_task(name="t3", tfds_name="not_a_dataset_here", data_dir=str(tmp_path))


def test_no_usable_document_is_a_one_line_error(tmp_path, vocab):
  (tmp_path / "a.txt").write_text("short\n\ntext\n")
  name = document_tasks.document_task(name="docs_none", train=str(tmp_path / "a.txt"))
  with pytest.raises(ConfigError, match=r"docs_none.*1 documents read, 1 too short"):
    PairBatchIterator(DataConfig(task=name, batch_size=2), process_index=0, process_count=1)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"txt": "wrong field"}\n')
  name = document_tasks.document_task(name="docs_bad", train=str(bad))
  with pytest.raises(Exception, match=r"bad.jsonl:2: missing text field 'text'"):
    pairs_of(name)
