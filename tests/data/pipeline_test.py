"""Batches of seqio pair tasks: exact tokens, determinism, resume, epochs, processes, mesh.

Oracles: `tokenization.TextEncoder` in plain Python for the ids; an
uninterrupted iterator for a resumed one; a single-process iterator for the
rows of several processes.
"""

import json

import gin
import jax
import numpy as np
import pytest

from embed_jax import partitioning, tokenization
from embed_jax.data import global_batches, order, pair_files, pipeline, tasks, vocabularies
from embed_jax.data.pipeline import DataConfig, PairBatchIterator
from embed_jax.data.sources import PairFileDataSource


@pytest.fixture(scope="module")
def encoder(sentencepiece_path):
  return tokenization.TextEncoder(tokenization.SentencePieceTokenizer(sentencepiece_path))


def register_file_task(name, patterns, encoder, fields=pair_files.PairFields(), skip=None):
  """A task over pair files with an explicit vocabulary (no gin needed)."""
  vocab_x = vocabularies.TemplateVocabulary(encoder, "x")
  vocab_y = vocabularies.TemplateVocabulary(encoder, "y")
  tasks.register_pair_task(name, PairFileDataSource({"train": patterns}, fields, skip_bad_examples=skip),
                           tasks.pair_output_features(vocab_x, vocab_y))
  return name


def numbered_pairs(n, tag):
  return [{"x": f"{tag} question {i}: what is the value of item {i}?",
           "y": f"{tag} answer {i}: " + "the value is kept in a list " * (i % 5)} for i in range(n)]


@pytest.fixture(scope="module")
def numbered_tasks(tmp_path_factory, encoder):
  """Tasks 'numbered30' (30 pairs) and 'numbered24' (24 pairs), all y distinct."""
  folder = tmp_path_factory.mktemp("numbered")
  for n in (30, 24):
    with open(folder / f"n{n}.jsonl", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(p) + "\n" for p in numbered_pairs(n, f"t{n}"))
    register_file_task(f"numbered{n}", str(folder / f"n{n}.jsonl"), encoder)
  return folder


def take(iterator, steps):
  return [next(iterator) for _ in range(steps)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for batch_a, batch_b in zip(a, b):
    assert batch_a.keys() == batch_b.keys()
    for k in batch_a:
      np.testing.assert_array_equal(batch_a[k], batch_b[k], err_msg=k)


def test_tokens_equal_the_python_encoder_and_keep_the_closing_delimiter(sentencepiece_path, encoder):
  gin.bind_parameter("text_encoder.sentencepiece_model", sentencepiece_path)
  config = DataConfig(task="stdlib_code", split="validation", batch_size=4, x_length=8, y_length=16,
                      shuffle=False)
  iterator = PairBatchIterator(config)
  table = iterator.tables["stdlib_code"][0].features
  records = seqio_records("stdlib_code", "validation")
  for side, texts, length in (("x", records.x, 8), ("y", records.y, 16)):
    expected = encoder.encode(texts, side, length)
    np.testing.assert_array_equal(table[f"{side}_tokens"], expected.tokens)
    np.testing.assert_array_equal(table[f"{side}_mask"], expected.mask)
    assert iterator.tables["stdlib_code"][0].truncated[side] == expected.truncated.sum() > 0
    last = table[f"{side}_tokens"][np.arange(len(texts)), table[f"{side}_mask"].sum(1) - 1]
    assert (last == encoder.delimiter_ids(side)[1]).all()
  assert (table["x_tokens"][:, 0] == encoder.delimiter_ids("x")[0]).all()
  # Unshuffled, the first batch is the first examples of the file.
  np.testing.assert_array_equal(next(iterator)["y_tokens"], table["y_tokens"][:4])
  assert f"stdlib_code[validation]: {len(records.x)} examples" in iterator.truncation_report()


def test_seqio_get_dataset_with_trimming_keeps_the_closing_delimiter(sentencepiece_path, encoder):
  """T5X-style use: seqio trims to the lengths first; the task's own truncation runs before."""
  import seqio  # pylint: disable=import-outside-toplevel
  gin.bind_parameter("text_encoder.sentencepiece_model", sentencepiece_path)
  task = seqio.get_mixture_or_task("stdlib_code")
  converter = pipeline.feature_converter(task)
  ds = seqio.get_dataset("stdlib_code", converter.task_feature_lengths(8, 16), dataset_split="validation",
                         shuffle=False, feature_converter=converter)
  examples = list(ds.take(20).as_numpy_iterator())
  records = seqio_records("stdlib_code", "validation")
  for side, texts, length in (("x", records.x[:20], 8), ("y", records.y[:20], 16)):
    expected = encoder.encode(texts, side, length)
    np.testing.assert_array_equal([e[f"{side}_tokens"] for e in examples], expected.tokens)


def seqio_records(task_name, split):
  import seqio  # pylint: disable=import-outside-toplevel
  return seqio.get_mixture_or_task(task_name).source.records(split)


def test_y_ids_hash_equal_sequences_equally():
  from embed_jax.data import batch_format  # pylint: disable=import-outside-toplevel
  tokens = np.array([[5, 6, 7, 0], [5, 6, 7, 9], [5, 6, 7, 0], [5, 6, 0, 0]], np.int32)
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0]], np.int32)
  ids = batch_format.sequence_hash(tokens, mask)
  assert ids.dtype == np.int32 and ids[0] == ids[1] == ids[2] != ids[3]


def test_stdlib_batches_are_deterministic_given_the_seed(sentencepiece_path):
  gin.bind_parameter("text_encoder.sentencepiece_model", sentencepiece_path)
  config = DataConfig(task="stdlib_code", split="test", batch_size=8, x_length=16, y_length=32, seed=3)
  first = take(PairBatchIterator(config), 3)
  assert_batches_equal(first, take(PairBatchIterator(config), 3))
  other = take(PairBatchIterator(DataConfig(**{**config.__dict__, "seed": 4})), 3)
  assert not np.array_equal(first[0]["y_ids"], other[0]["y_ids"])
  assert first[0]["x_tokens"].shape == (8, 16) and first[0]["y_tokens"].shape == (8, 32)


def test_resume_continues_with_the_next_unseen_example(numbered_tasks):
  del numbered_tasks
  config = DataConfig(task="numbered30", batch_size=4, x_length=16, y_length=16, num_shards=2, seed=7)
  uninterrupted = take(PairBatchIterator(config), 12)
  interrupted = PairBatchIterator(config)
  states = {}
  for step in range(8):
    next(interrupted)
    states[step + 1] = json.loads(json.dumps(interrupted.get_state()))
  resumed = PairBatchIterator(config)
  for k in (8, 5):  # Step 8 is past the first epoch of each 15-example shard.
    resumed.set_state(states[k])
    assert_batches_equal(take(resumed, 12 - k), uninterrupted[k:])


def test_an_epoch_sees_every_example_exactly_once(numbered_tasks):
  del numbered_tasks
  config = DataConfig(task="numbered24", batch_size=4, x_length=16, y_length=16, num_shards=2, seed=1)
  iterator = PairBatchIterator(config)
  everything = {int(i) for shard in iterator.tables["numbered24"].values() for i in shard.features["y_ids"]}
  assert len(everything) == 24
  epochs = [np.concatenate([b["y_ids"] for b in take(iterator, 6)]) for _ in range(2)]
  for seen in epochs:
    assert sorted(seen.tolist()) == sorted(everything)
  assert not np.array_equal(epochs[0], epochs[1])  # A new permutation each epoch.


def test_processes_read_disjoint_shards_and_assemble_the_single_process_batch(numbered_tasks):
  del numbered_tasks
  config = DataConfig(task="numbered30", batch_size=8, x_length=16, y_length=16, num_shards=4, seed=2)
  single = take(PairBatchIterator(config, process_count=1, process_index=0), 6)
  hosts = [PairBatchIterator(config, process_count=2, process_index=p) for p in range(2)]
  assert [h.local_shards for h in hosts] == [[0, 1], [2, 3]]
  assert [h.local_rows for h in hosts] == [slice(0, 4), slice(4, 8)]
  held = [{int(i) for t in h.tables["numbered30"].values() for i in t.features["y_ids"]} for h in hosts]
  assert not held[0] & held[1] and len(held[0] | held[1]) == 30
  per_host = [take(h, 6) for h in hosts]
  assembled = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*per_host)]
  assert_batches_equal(assembled, single)
  assert hosts[0].get_state() == hosts[1].get_state()


def test_global_batches_are_sharded_over_the_batch_axes(numbered_tasks):
  del numbered_tasks
  mesh = partitioning.create_mesh(data=4, fsdp=2)
  config = DataConfig(task="numbered30", batch_size=16, x_length=16, y_length=16, seed=5)
  host = take(PairBatchIterator(config), 2)
  batches = global_batches.GlobalBatchIterator(PairBatchIterator(config), mesh)
  for expected in host:
    batch = next(batches)
    for k, array in batch.items():
      assert isinstance(array, jax.Array)
      assert array.sharding.is_equivalent_to(partitioning.batch_sharding(mesh, array.ndim), array.ndim)
      assert array.addressable_shards[0].data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(array), expected[k])
  assert batches.get_state()["order"]["step"] == 2


def test_process_rows_must_match_the_mesh(numbered_tasks):
  del numbered_tasks
  mesh = partitioning.create_mesh(data=8)
  config = DataConfig(task="numbered30", batch_size=8, x_length=16, y_length=16, num_shards=2)
  pretend_two_hosts = PairBatchIterator(config, process_count=2, process_index=1)
  with pytest.raises(ValueError, match=r"feeds rows \[4, 8\)"):
    global_batches.GlobalBatchIterator(pretend_two_hosts, mesh)


def test_mixture_follows_its_rates_and_resumes(numbered_tasks):
  del numbered_tasks
  tasks.register_mixture("numbered_mix", [("numbered30", 3.0), ("numbered24", 1.0)])
  config = DataConfig(task="numbered_mix", batch_size=8, x_length=16, y_length=16, num_shards=2, seed=0)
  iterator = PairBatchIterator(config)
  from_30 = {int(i) for t in iterator.tables["numbered30"].values() for i in t.features["y_ids"]}
  batches, state_at_25 = [], None
  for step in range(40):
    batches.append(next(iterator))
    if step == 24:
      state_at_25 = json.loads(json.dumps(iterator.get_state()))
  share = np.mean([int(i) in from_30 for b in batches for i in b["y_ids"]])
  assert 0.65 < share < 0.85, share
  resumed = PairBatchIterator(config)
  resumed.set_state(state_at_25)
  assert_batches_equal(take(resumed, 15), batches[25:])


def test_hard_negatives_are_padded_to_h(tmp_path, encoder, write_jsonl):
  path = write_jsonl(tmp_path / "neg.jsonl", [
      {"q": "first query", "p": "first answer", "n": ["wrong one", "wrong two", "wrong three"]},
      {"q": "second query", "p": "second answer", "n": []},
      {"q": "third query", "p": "third answer", "n": "only wrong " * 10},
  ])
  register_file_task("with_negatives", path, encoder, pair_files.PairFields("q", "p", ("n",)))
  config = DataConfig(task="with_negatives", batch_size=3, x_length=8, y_length=12, num_negatives=2,
                      shuffle=False)
  iterator = PairBatchIterator(config)
  batch = next(iterator)
  assert batch["neg_tokens"].shape == batch["neg_mask"].shape == (3, 2, 12)
  for row, negatives in enumerate([["wrong one", "wrong two"], [], ["only wrong " * 10]]):
    if negatives:
      expected = encoder.encode(negatives, "y", 12)
      np.testing.assert_array_equal(batch["neg_tokens"][row, :len(negatives)], expected.tokens)
      np.testing.assert_array_equal(batch["neg_mask"][row, :len(negatives)], expected.mask)
    assert not batch["neg_mask"][row, len(negatives):].any()
    assert (batch["neg_tokens"][row, len(negatives):] == encoder.pad_id).all()
  assert iterator.tables["with_negatives"][0].truncated["negatives"] == 1


def test_bad_lines_fail_the_pipeline_unless_skipped(tmp_path, encoder, write_jsonl):
  path = write_jsonl(tmp_path / "bad.jsonl", [{"x": "a b", "y": "c d"}, '{"x": "e f", "y"', {"x": "g", "y": "h"}])
  register_file_task("bad_lines", path, encoder)
  config = DataConfig(task="bad_lines", batch_size=2, x_length=8, y_length=8)
  with pytest.raises(pair_files.BadInputError, match=r"bad.jsonl:2: malformed JSON"):
    PairBatchIterator(config)
  gin.parse_config("skip_bad_examples = True")
  assert PairBatchIterator(config).tables["bad_lines"][0].size == 2


def test_tasks_and_mixtures_from_gin(tmp_path, sentencepiece_path, write_jsonl):
  path = write_jsonl(tmp_path / "mine.jsonl", numbered_pairs(12, "mine"))
  gin.parse_config(f"""
      text_encoder.sentencepiece_model = '{sentencepiece_path}'
      mine/file_task.name = 'mine'
      mine/file_task.train = '{tmp_path}/mine*.jsonl'
      mix/mixture.name = 'mine_and_code'
      mix/mixture.tasks = [(@mine/file_task(), 1.0), ('stdlib_code', 1.0)]
      DataConfig.task = @mix/mixture()
      DataConfig.split = 'train'
      DataConfig.batch_size = 4
      DataConfig.x_length = 8
      DataConfig.y_length = 8
  """)
  del path
  config = DataConfig()  # pylint: disable=no-value-for-parameter
  assert config.task == "mine_and_code"
  assert [t.name for t, _ in pipeline.tasks_and_rates(config.task)] == ["mine", "stdlib_code"]
  assert isinstance(tasks.file_task(name="solo", test=str(tmp_path / "mine.jsonl")), str)


def test_restoring_a_foreign_state_fails(numbered_tasks):
  del numbered_tasks
  config = DataConfig(task="numbered24", batch_size=4, x_length=8, y_length=8, num_shards=2)
  iterator = PairBatchIterator(config)
  state = iterator.get_state()
  with pytest.raises(order.StateMismatchError, match="task='numbered30'"):
    iterator.set_state({**state, "task": "numbered30"})
  with pytest.raises(order.StateMismatchError, match="seed=9"):
    iterator.set_state({**state, "order": {**state["order"], "seed": 9}})
