"""The order of examples over shards: epochs, mixtures, processes, resumable state (no tensorflow)."""

import json

import numpy as np
import pytest

from embed_jax.data.order import ShardedOrder, StateMismatchError


def make(tasks=("a",), rates=(1.0,), sizes=None, num_shards=2, seed=0, shuffle=True, shards=None):
  sizes = sizes or {t: {v: 5 + v for v in range(num_shards)} for t in tasks}
  shards = range(num_shards) if shards is None else shards
  return ShardedOrder(list(tasks), list(rates), {t: {v: sizes[t][v] for v in shards} for t in tasks},
                      num_shards, seed, shuffle)


def stream_of(blocks_per_step, shard_position):
  return np.concatenate([blocks[shard_position][1] for blocks in blocks_per_step])


def test_each_shard_stream_is_a_new_permutation_every_epoch():
  order = make(sizes={"a": {0: 5, 1: 4}})
  steps = [order.next_step(4, [0, 1]) for _ in range(10)]  # 2 rows per shard per step.
  for position, n in ((0, 5), (1, 4)):
    stream = stream_of(steps, position)
    epochs = [stream[e * n:(e + 1) * n] for e in range(len(stream) // n)]
    assert all(sorted(e.tolist()) == list(range(n)) for e in epochs)
    assert any(not np.array_equal(epochs[0], e) for e in epochs[1:])
  assert order.consumed == {"a": [20, 20]} and order.step == 10


def test_unshuffled_streams_are_in_file_order():
  order = make(shuffle=False)
  steps = [order.next_step(2, [0, 1]) for _ in range(7)]
  assert stream_of(steps, 0).tolist() == [0, 1, 2, 3, 4, 0, 1]


def test_any_split_of_shards_over_processes_gives_the_same_rows_and_state():
  whole = make(tasks=("a", "b"), rates=(2.0, 1.0), num_shards=4)
  parts = [make(tasks=("a", "b"), rates=(2.0, 1.0), num_shards=4, shards=s) for s in ([0, 1], [2, 3])]
  for _ in range(6):
    expected = whole.next_step(8, [0, 1, 2, 3])
    got = parts[0].next_step(8, [0, 1]) + parts[1].next_step(8, [2, 3])
    for (c1, e1), (c2, e2) in zip(expected, got):
      np.testing.assert_array_equal(c1, c2)
      np.testing.assert_array_equal(e1, e2)
  assert whole.get_state() == parts[0].get_state() == parts[1].get_state()


def test_mixture_rates_and_counters():
  order = make(tasks=("a", "b"), rates=(3.0, 1.0), num_shards=2, seed=4)
  steps = [order.next_step(16, [0, 1]) for _ in range(50)]
  choices = np.concatenate([c for blocks in steps for c, _ in blocks])
  assert abs(np.mean(choices == 0) - 0.75) < 0.05
  assert sum(sum(c) for c in order.consumed.values()) == 50 * 16
  for task_index, task in enumerate(("a", "b")):
    for shard in range(2):
      assert order.consumed[task][shard] == sum(int((blocks[shard][0] == task_index).sum()) for blocks in steps)


def test_state_restores_exactly():
  reference = make(tasks=("a", "b"), rates=(1.0, 1.0), seed=3)
  expected = [reference.next_step(4, [0, 1]) for _ in range(9)]
  first = make(tasks=("a", "b"), rates=(1.0, 1.0), seed=3)
  for _ in range(4):
    first.next_step(4, [0, 1])
  resumed = make(tasks=("a", "b"), rates=(1.0, 1.0), seed=3)
  resumed.set_state(json.loads(json.dumps(first.get_state())))
  for blocks in expected[4:]:
    for (c1, e1), (c2, e2) in zip(blocks, resumed.next_step(4, [0, 1])):
      np.testing.assert_array_equal(c1, c2)
      np.testing.assert_array_equal(e1, e2)


@pytest.mark.parametrize("change, message", [
    ({"seed": 1}, "seed=1"),
    ({"num_shards": 4}, "num_shards=4"),
    ({"consumed": {"b": [0, 0]}}, "tasks \\['b'\\]"),
    ({"format": "other"}, "not an iterator state"),
])
def test_foreign_states_are_refused(change, message):
  order = make()
  with pytest.raises(StateMismatchError, match=message):
    order.set_state({**order.get_state(), **change})


def test_bad_configurations():
  with pytest.raises(ValueError, match="no examples in shard 1"):
    make(sizes={"a": {0: 3, 1: 0}})
  with pytest.raises(ValueError, match="not divisible by the 2 shards"):
    make().next_step(3, [0, 1])
  with pytest.raises(ValueError, match="non-negative"):
    make(tasks=("a", "b"), rates=(1.0, -1.0))
