"""Streamed batches: lazily read pair files and documents; resume equals an uninterrupted run."""

import json

import gin
import numpy as np
import pytest

from embed_jax.data import document_tasks, pair_streams, pair_files, tasks
from embed_jax.data.pipeline import DataConfig, host_batch_iterator
from embed_jax.data.streaming import StreamingPairBatchIterator


@pytest.fixture
def streamed_mixture(tmp_path, sentencepiece_path):
  gin.bind_parameter("text_encoder.sentencepiece_model", sentencepiece_path)
  for f in range(3):
    (tmp_path / f"pairs-{f}.jsonl").write_text("".join(
        json.dumps({"x": f"file {f} query {i}", "y": f"file {f} answer number {i}"}) + "\n" for i in range(7)))
  pairs = tasks.file_task(name="stream_pairs", train=str(tmp_path / "pairs-*.jsonl"), streaming=True)
  for d in range(4):
    (tmp_path / f"doc{d}.txt").write_text("\n\n".join(
        " ".join(f"doc{d}para{p}word{i}" for i in range(8)) for p in range(4)))
  docs = document_tasks.document_task(name="stream_docs", train=str(tmp_path / "doc*.txt"))
  return tasks.mixture(name="stream_mix", tasks=[(pairs, 2.0), (docs, 1.0)])


def batches(iterator, steps):
  return [next(iterator) for _ in range(steps)]


def assert_same(a, b):
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_resume_equals_an_uninterrupted_run_across_epochs(streamed_mixture):
  config = DataConfig(task=streamed_mixture, batch_size=4, x_length=16, y_length=16, num_shards=2, seed=5)
  make = lambda: StreamingPairBatchIterator(config, process_index=0, process_count=1, shuffle_buffer=5)
  whole = batches(make(), 12)  # 48 rows: over an epoch of every shard of both tasks.
  first = make()
  assert_same(batches(first, 9), whole[:9])
  assert any(s.epoch >= 1 for t in first.streams.values() for s in t.values())  # Past an epoch.
  state = json.loads(json.dumps(first.get_state()))
  resumed = make()
  resumed.set_state(state)
  assert_same(batches(resumed, 3), whole[9:])
  # Another seed, another order.
  other = StreamingPairBatchIterator(DataConfig(**{**config.__dict__, "seed": 6}), process_index=0,
                                     process_count=1, shuffle_buffer=5)
  assert any((a["y_ids"] != b["y_ids"]).any() for a, b in zip(batches(other, 5), whole[:5]))


def test_processes_assemble_the_single_process_batch(streamed_mixture):
  config = DataConfig(task=streamed_mixture, batch_size=4, x_length=16, y_length=16, num_shards=2,
                      streaming=True)
  one = StreamingPairBatchIterator(config, process_index=0, process_count=1)
  low, high = (StreamingPairBatchIterator(config, process_index=p, process_count=2) for p in (0, 1))
  for batch in batches(one, 6):
    parts = [next(low), next(high)]
    for k in batch:
      np.testing.assert_array_equal(batch[k], np.concatenate([p[k] for p in parts]), err_msg=k)
  assert isinstance(host_batch_iterator(config), StreamingPairBatchIterator)


def test_pair_streams_shard_by_file_and_read_lazily(tmp_path):
  paths = []
  for f in range(3):
    path = tmp_path / f"p{f}.jsonl"
    path.write_text("".join(json.dumps({"x": f"q{f}{i}", "y": f"a{f}{i}"}) + "\n" for i in range(4))
                    + "not json\n")
    paths.append(str(path))
  stream = pair_streams.iter_pairs(paths[:1], shard=0, num_shards=1)
  assert [next(stream)[0] for _ in range(4)] == ["q00", "q01", "q02", "q03"]  # Before the bad line.
  with pytest.raises(pair_files.BadInputError, match=r"p0.jsonl:5: malformed JSON"):
    next(stream)
  skipped = []
  shards = [[x for x, _, _ in pair_streams.iter_pairs(paths, skip_bad_examples=True, shard=v, num_shards=2,
                                                      skipped=skipped)] for v in range(2)]
  assert shards[0] == [f"q0{i}" for i in range(4)] + [f"q2{i}" for i in range(4)]
  assert shards[1] == [f"q1{i}" for i in range(4)] and len(skipped) == 3
  few = [[x for x, _, _ in pair_streams.iter_pairs(paths[:1], skip_bad_examples=True, shard=v, num_shards=2)]
         for v in range(2)]
  assert few == [["q00", "q02"], ["q01", "q03"]]
