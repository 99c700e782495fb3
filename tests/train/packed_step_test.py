"""Packed batches: the host layout, and a packed step equal to the padded step (loss, metrics, grads)."""

import jax
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.data import packed_batches
from embed_jax.models.bert import BertConfig
from embed_jax.models.dual_encoder import DualEncoderConfig
from embed_jax.models.sharded_init import init_dual_encoder, param_shardings
from embed_jax.models.transformer import DecoderConfig
from embed_jax.train import optimizer, updater as updater_lib
from embed_jax.train.objective import ContrastiveObjective

VOCAB, LENGTH = 64, 16
OPEN_X, CLOSE_X, OPEN_Y, CLOSE_Y = 60, 61, 62, 63
DELIMITERS = {"x_delimiter_ids": (OPEN_X, CLOSE_X), "y_delimiter_ids": (OPEN_Y, CLOSE_Y)}
DECODER = DualEncoderConfig(
    encoder=DecoderConfig(vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2,
                          max_length=LENGTH, dropout_rate=0.1),
    pooling="eos", **DELIMITERS)
BERT = DualEncoderConfig(
    encoder=BertConfig(vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                       max_length=LENGTH),
    pooling="mean", **DELIMITERS)


def _side(rng, open_id, close_id, shape):
  """Right-padded texts [*shape, LENGTH] of 2..10 tokens (mostly short), delimiters included."""
  lengths = np.minimum(rng.geometric(0.25, size=shape) + 1, 10)
  tokens = rng.integers(1, 60, size=shape + (LENGTH,)).astype(np.int32)
  tokens[..., 0] = open_id
  np.put_along_axis(tokens, (lengths - 1)[..., None], close_id, axis=-1)
  mask = (np.arange(LENGTH) < lengths[..., None]).astype(np.int32)
  return tokens * mask, mask


def _batch(rng, batch_size, negatives=0):
  x, xm = _side(rng, OPEN_X, CLOSE_X, (batch_size,))
  y, ym = _side(rng, OPEN_Y, CLOSE_Y, (batch_size,))
  ids = rng.integers(0, 1000, size=batch_size).astype(np.int32)
  ids[1] = ids[0]  # A duplicate y text: masked as a negative.
  batch = {"x_tokens": x, "x_mask": xm, "y_tokens": y, "y_mask": ym, "y_ids": ids}
  if negatives:
    batch["neg_tokens"], batch["neg_mask"] = _side(rng, OPEN_Y, CLOSE_Y, (batch_size, negatives))
  return batch


def _pack(batch, groups, config):
  closing = {s: config.closing_id(s) for s in ("x", "y")} if config.pooling == "eos" else None
  return packed_batches.pack_batch(batch, groups=groups, pooling=config.pooling, closing_ids=closing)


@pytest.mark.parametrize("mesh_shape, config, chunks, negatives", [
    ((8,), DECODER, 1, 0),
    ((4, 2), DECODER, 2, 1),
    ((8,), BERT, 2, 0),
    ((4, 2), BERT, 1, 0),
], ids=["8-decoder-eos-direct", "4x2-decoder-eos-gradcache-neg", "8-bert-mean-gradcache",
        "4x2-bert-mean-direct"])
def test_packed_step_equals_padded_step(mesh_shape, config, chunks, negatives):
  mesh = partitioning.create_mesh(*mesh_shape)
  module, params = init_dual_encoder(config, jax.random.key(0), mesh)
  tx, _ = optimizer.make_optimizer(10)
  step = updater_lib.Updater(ContrastiveObjective(module, mesh, dropout=False), tx, None,
                             param_shardings(module, mesh), grad_cache_chunks=chunks)
  host = _batch(np.random.default_rng(1), 64, negatives)
  packed = _pack(host, step.num_shards * chunks, config)
  for side in ("x", "y", "neg")[:2 + bool(negatives)]:
    assert packed[f"{side}_packed_tokens"].shape[0] < host[f"{side}_mask"][..., 0].size

  place = lambda b: {k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim))
                     for k, v in b.items()}
  rng = jax.random.PRNGKey(3)
  with partitioning.activate(mesh):
    grads = jax.jit(step.grads)
    padded = grads(params, place(host), rng)
    together = grads(params, place(packed), rng)
  np.testing.assert_allclose(together[0], padded[0], rtol=1e-5)
  assert set(together[1]) == set(padded[1])
  for name in padded[1]:
    np.testing.assert_allclose(together[1][name], padded[1][name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(padded[2]),
                          jax.tree.leaves(together[2])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


def test_packed_pooling_moves_no_data_between_devices():
  """Encoder and pooling of a packed chunk compile without any collective on a data-only mesh."""
  mesh = partitioning.create_mesh(8)
  module, params = init_dual_encoder(BERT, jax.random.key(0), mesh)
  objective = ContrastiveObjective(module, mesh, dropout=False)
  step = updater_lib.Updater(objective, None, None, None)
  packed = _pack(_batch(np.random.default_rng(2), 32), step.num_shards, BERT)
  batch = {k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim)) for k, v in packed.items()}

  def embed(p, b):
    chunk = {k: step._chunk(v)[0] for k, v in objective.inputs(b).items()}  # pylint: disable=protected-access
    return objective.embed(p, chunk, jax.random.PRNGKey(0))
  with partitioning.activate(mesh):
    hlo = jax.jit(embed).lower(params, batch).compile().as_text()
  for collective in ("all-gather", "all-to-all", "all-reduce", "collective-permute"):
    assert collective not in hlo


def test_host_layout_keeps_every_token_in_its_group():
  groups, b, h = 4, 16, 2
  batch = _batch(np.random.default_rng(0), b, negatives=h)
  packed = _pack(batch, groups, DECODER)
  m = b // groups
  assert packed["y_ids"] is batch["y_ids"] and "x_tokens" not in packed and "neg_mask" not in packed
  assert packed["x_pool_index"].shape == (b,) and packed["neg_pool_index"].shape == (b, h)
  for side, per_row, close in (("x", 1, CLOSE_X), ("y", 1, CLOSE_Y), ("neg", h, CLOSE_Y)):
    tokens = batch[f"{side}_tokens"].reshape(groups, m * per_row, LENGTH)
    mask = batch[f"{side}_mask"].reshape(groups, m * per_row, LENGTH).astype(bool)
    rows = packed[f"{side}_packed_tokens"].shape[0] // groups
    assert rows * groups == packed[f"{side}_segment_ids"].shape[0]
    assert rows < m * per_row  # Texts share rows.
    pool_index = packed[f"{side}_pool_index"].reshape(groups, m * per_row)
    assert pool_index.min() >= 0 and pool_index.max() < rows * LENGTH  # Local to the group.
    for g in range(groups):
      block = slice(g * rows, (g + 1) * rows)
      group_tokens = packed[f"{side}_packed_tokens"][block]
      owner = packed[f"{side}_text_of_token"][block]
      segments = packed[f"{side}_segment_ids"][block]
      # Only this group's texts (local 0..m*per_row-1) or padding, every real token kept once.
      assert set(np.unique(owner)) <= set(range(m * per_row + 1))
      assert (segments > 0).sum() == mask[g].sum()
      assert np.all((owner == m * per_row) == (segments == 0))
      for i in range(m * per_row):
        np.testing.assert_array_equal(group_tokens[owner == i], tokens[g, i][mask[g, i]])
        assert group_tokens.reshape(-1)[pool_index[g, i]] == close


def test_empty_text_is_a_clear_error_and_a_missing_negative_a_masked_placeholder():
  batch = _batch(np.random.default_rng(0), 8, negatives=2)
  batch["y_mask"][5] = 0  # An empty y text cannot be packed.
  with pytest.raises(ValueError, match=r"cannot pack the y texts of batch rows \[4, 8\).*"
                                       r"texts \[1\] are empty"):
    _pack(batch, 2, DECODER)
  batch = _batch(np.random.default_rng(0), 8, negatives=2)
  batch["neg_mask"][5, 1] = 0  # A missing hard negative: all padding.
  packed = _pack(batch, 2, DECODER)
  expected = np.ones((8, 2), np.int32)
  expected[5, 1] = 0
  np.testing.assert_array_equal(packed["neg_valid"], expected)
  # Its placeholder is one closing delimiter, pooled where the texts are.
  flat = packed["neg_packed_tokens"].reshape(2, -1)[1]
  assert flat[packed["neg_pool_index"][5, 1]] == CLOSE_Y
  with pytest.raises(ValueError, match="do not split into 3 groups"):
    _pack(_batch(np.random.default_rng(0), 8), 3, DECODER)


def test_processes_agree_on_the_row_counts(monkeypatch):
  """With several processes every side gets the most rows any process needs (host_allgather)."""
  batch = _batch(np.random.default_rng(0), 8)
  alone = _pack(batch, 2, DECODER)
  other = [4, 1]  # Another process needs 4 x rows and 1 y row per group.
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(partitioning, "host_allgather", lambda name, rows: [rows, other])
  agreed = _pack(batch, 2, DECODER)
  rows = alone["x_packed_tokens"].shape[0] // 2
  assert rows < 4 and agreed["x_packed_tokens"].shape[0] == 2 * 4
  assert agreed["y_packed_tokens"].shape == alone["y_packed_tokens"].shape
  np.testing.assert_array_equal(agreed["x_pool_index"], alone["x_pool_index"])
  np.testing.assert_array_equal(agreed["x_packed_tokens"][4:4 + rows], alone["x_packed_tokens"][rows:])
