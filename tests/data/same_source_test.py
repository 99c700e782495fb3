"""Mixtures with same-source batches: one task per global batch, the mixture's rates, resumable."""

import json

import numpy as np
import pytest

from embed_jax import tokenization
from embed_jax.data import order, pair_files, tasks, vocabularies
from embed_jax.data.pipeline import DataConfig, PairBatchIterator
from embed_jax.data.sources import PairFileDataSource


def _choices_by_step(o, steps, batch=8, shards=(0, 1, 2, 3)):
  return [np.concatenate([c for c, _ in o.next_step(batch, shards)]) for _ in range(steps)]


def test_each_global_batch_holds_one_task_and_the_rates_hold():
  sizes = {t: {v: 5 for v in range(4)} for t in ("a", "b", "c")}
  o = order.ShardedOrder(["a", "b", "c"], [6.0, 3.0, 1.0], sizes, 4, seed=3, same_source_batches=True)
  steps = _choices_by_step(o, 2000)
  assert all((c == c[0]).all() for c in steps)
  share = np.bincount([c[0] for c in steps], minlength=3) / len(steps)
  # Binomial standard deviations at n=2000 are at most 0.011; 4 sigma.
  np.testing.assert_allclose(share, [0.6, 0.3, 0.1], atol=0.045)
  # Without the option, rows of one batch mix tasks.
  mixed = order.ShardedOrder(["a", "b", "c"], [6.0, 3.0, 1.0], sizes, 4, seed=3)
  assert any(len(set(c.tolist())) > 1 for c in _choices_by_step(mixed, 20))


def test_every_process_sees_the_same_task_and_a_resume_continues():
  sizes = {t: {v: 7 for v in range(4)} for t in ("a", "b")}
  make = lambda: order.ShardedOrder(["a", "b"], [1.0, 1.0], sizes, 4, seed=0, same_source_batches=True)
  full, first, second = make(), make(), make()
  for _ in range(30):
    whole = full.next_step(8, [0, 1, 2, 3])
    low, high = first.next_step(8, [0, 1]), second.next_step(8, [2, 3])
    for (c, e), (c2, e2) in zip(whole, low + high):
      np.testing.assert_array_equal(c, c2)
      np.testing.assert_array_equal(e, e2)
  state = json.loads(json.dumps(full.get_state()))
  resumed = make()
  resumed.set_state(state)
  for _ in range(10):
    for (c, e), (c2, e2) in zip(full.next_step(8, [0, 1, 2, 3]), resumed.next_step(8, [0, 1, 2, 3])):
      np.testing.assert_array_equal(c, c2)
      np.testing.assert_array_equal(e, e2)
  mixed = order.ShardedOrder(["a", "b"], [1.0, 1.0], sizes, 4, seed=0)
  with pytest.raises(order.StateMismatchError, match="same_source_batches"):
    mixed.set_state(state)


def test_a_same_source_mixture_gives_batches_of_one_task(tmp_path, sentencepiece_path):
  encoder = tokenization.TextEncoder(tokenization.SentencePieceTokenizer(sentencepiece_path))
  features = tasks.pair_output_features(vocabularies.TemplateVocabulary(encoder, "x"),
                                        vocabularies.TemplateVocabulary(encoder, "y"))
  y_sets = {}
  for tag in ("code", "text"):
    path = tmp_path / f"{tag}.jsonl"
    pairs = [{"x": f"{tag} query {i}", "y": f"{tag} document number {i}"} for i in range(12)]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    tasks.register_pair_task(f"ss_{tag}", PairFileDataSource({"train": str(path)}), features)
    y_sets[tag] = {p["y"] for p in pairs}
  tasks.mixture(name="ss_mix", tasks=[("ss_code", 1.0), ("ss_text", 1.0)], same_source_batches=True)
  assert tasks.same_source_batches("ss_mix")
  iterator = PairBatchIterator(DataConfig(task="ss_mix", batch_size=4, x_length=16, y_length=16),
                               process_index=0, process_count=1)
  seen = set()
  for _ in range(12):
    batch = next(iterator)
    texts = {encoder.decode(t[m == 1][1:-1]).strip() for t, m in zip(batch["y_tokens"], batch["y_mask"])}
    kind = [tag for tag, ys in y_sets.items() if texts <= ys]
    assert len(kind) == 1, texts
    seen.add(kind[0])
  assert seen == {"code", "text"}
