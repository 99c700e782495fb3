"""The memory-lean sharded loss: y blocks travel a ppermute ring, logits are never stored.

Each of the K shards keeps its n local x rows at home; the local y rows (with
their hard negatives, ids, positive logits and y->x statistics) form a *block*
that visits every shard once and comes home. Visiting shard k, block b is scored
tile by tile (`tile x tile` logits at a time) against k's x rows:

* x->y: each local row keeps a running max and sum (flash-style online
  log-sum-exp) of its negatives' logits minus its positive logit;
* y->x: the block's columns keep the same statistics, which travel with it.

A row's cross-entropy is then softplus(z) with z = log sum_neg exp(l_neg - l_pos),
accurate in float32 even when the loss is tiny. The positive pairs never enter
the ring: pair i lives on one shard, both sides.

`jax.custom_vjp` keeps autodiff from saving every visiting tile: the forward
saves only the per-row z of both directions; the backward makes a second lap,
recomputes each tile's probabilities from z, and lets each block's gradient
accumulators (dy, d hard negatives) travel with it back home.

Memory per shard: O(n x d x (1 + H)) for the blocks in flight and the
accumulators, plus O(tile^2) for one tile of logits; never O(n x B) or O(n^2).
Rows and columns are tiled without padding: the last tile is clamped to end at
the last row and its overlap with the previous tile is masked.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from embed_jax.losses import common

_NEG_INF = -jnp.inf


def ring_loss(
    inputs: dict[str, jax.Array],
    log_temp: jax.Array,
    *,
    mesh: jax.sharding.Mesh | None,
    axes: common.BatchAxes,
    tile_size: int,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Symmetric InfoNCE over the global batch by a ppermute ring over `axes` of `mesh`.

  Args:
    inputs: 'x', 'y' float32 [B, d]; optional 'hard' float32 [B, H, d] and 'ids' int [B].
    log_temp: float32 scalar, replicated.
    mesh, axes: the mesh and its batch axes; axes=() runs the tiled loop on one device.
    tile_size: rows (and columns) of the largest logit tile held at a time.

  Returns:
    (loss, metrics) as `embed_jax.losses.contrastive_loss` describes.
  """
  return _ring_loss_fn(mesh, axes, tile_size)(inputs, log_temp)


@functools.lru_cache(maxsize=None)
def _ring_loss_fn(mesh, axes: common.BatchAxes, tile_size: int):
  """The custom-VJP loss for one (mesh, axes, tile) configuration."""
  num_shards = math.prod(mesh.shape[a] for a in axes) if axes else 1
  config = dict(axes=axes, num_shards=num_shards, tile_size=tile_size)

  def run_forward(inputs, log_temp):
    specs = jax.tree.map(lambda _: P(axes), inputs)
    kernel = functools.partial(_forward_kernel, **config)
    sharded = common.shard_over_batch(
        kernel, mesh, axes, (specs, P()), (P(), P(), P(axes), P(axes)))
    loss_sum, sums, row_mass, col_mass = sharded(inputs, log_temp)
    batch = inputs["x"].shape[0]
    metrics = common.finalize_metrics(sums, batch, log_temp)
    return loss_sum / (2 * batch), metrics, (row_mass, col_mass)

  @jax.custom_vjp
  def loss_fn(inputs, log_temp):
    loss, metrics, _ = run_forward(inputs, log_temp)
    return loss, metrics

  def loss_fwd(inputs, log_temp):
    loss, metrics, masses = run_forward(inputs, log_temp)
    return (loss, metrics), (inputs, log_temp, masses)

  def loss_bwd(residuals, cotangents):
    inputs, log_temp, (row_mass, col_mass) = residuals
    loss_cotangent = cotangents[0]  # metrics carry no gradient
    batch = inputs["x"].shape[0]
    weight = loss_cotangent / (2 * batch)
    specs = jax.tree.map(lambda _: P(axes), inputs)
    grad_specs = {k: v for k, v in specs.items() if k != "ids"}
    kernel = functools.partial(_backward_kernel, **config)
    sharded = common.shard_over_batch(
        kernel, mesh, axes, (specs, P(), P(axes), P(axes), P()), (grad_specs, P()))
    grads, d_log_temp = sharded(inputs, log_temp, row_mass, col_mass, weight)
    if "ids" in inputs:
      grads["ids"] = None
    return grads, d_log_temp

  loss_fn.defvjp(loss_fwd, loss_bwd)
  return loss_fn


def _tile(index, tile: int, total: int):
  """Start of tile `index` clamped to end at `total`, and which of its rows are new.

  Returns (start, fresh): fresh is bool [tile], False for the rows the clamped
  last tile shares with the one before (they were already counted).
  """
  start = jnp.minimum(index * tile, total - tile)
  fresh = start + jnp.arange(tile) >= index * tile
  return start, fresh


def _slice(a: jax.Array, start, size: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(a, start, size, axis=0)


def _update(a: jax.Array, value: jax.Array, start) -> jax.Array:
  return jax.lax.dynamic_update_slice_in_dim(a, value, start, axis=0)


def _merge_online(peak, total, shifted, axis: int):
  """Folds a tile of shifted logits (-inf = masked) into running (max, sum of exp(. - max)).

  The guards keep rows that have seen only -inf at (-inf, 0) instead of NaN.
  """
  new_peak = jnp.maximum(peak, jnp.max(shifted, axis=axis))
  safe_peak = jnp.where(new_peak == _NEG_INF, 0.0, new_peak)
  expand = (lambda a: a[:, None]) if axis == 1 else (lambda a: a[None, :])
  total = total * jnp.exp(peak - safe_peak) + jnp.sum(jnp.exp(shifted - expand(safe_peak)), axis=axis)
  return new_peak, total


@dataclasses.dataclass(frozen=True)
class _Tiling:
  """How a shard's n rows, and a visiting block's n columns and n*H hard negatives, are tiled."""
  local: int
  tile: int
  num_tiles: int
  hard_count: int
  hard_tile: int
  num_hard_tiles: int

  @classmethod
  def of(cls, inputs: dict[str, jax.Array], tile_size: int) -> _Tiling:
    local = inputs["x"].shape[0]
    tile = min(tile_size, local)
    hard_count = math.prod(inputs["hard"].shape[:2]) if "hard" in inputs else 0
    hard_tile = min(tile_size, max(hard_count, 1))
    return cls(local, tile, -(-local // tile), hard_count, hard_tile, -(-hard_count // hard_tile))


def _tile_negatives(row_index, col_index, row_ids, col_ids, row_fresh, col_fresh) -> jax.Array:
  """bool [tile, tile]: in-batch negatives among the tile's new rows and new columns."""
  return (common.negative_pair_mask(row_index, col_index, row_ids, col_ids)
          & row_fresh[:, None] & col_fresh[None, :])


def _ring_lap(row_tile, carry, *, tiling: _Tiling, axes, num_shards: int):
  """One lap of the ring: at each position, `row_tile(r, col_index, carry)` for every row tile.

  `col_index` holds the global batch indices of the visiting block's rows;
  carry['block'] is passed on after each position, so after `num_shards` steps
  every block is back on the shard it came from. The steps are a `fori_loop`,
  so only one block is in flight at a time.
  """
  permutation = [(i, (i + 1) % num_shards) for i in range(num_shards)]
  shard = common.shard_index(axes)

  def step(index, carry):
    col_index = (shard - index) % num_shards * tiling.local + jnp.arange(tiling.local)
    carry = jax.lax.fori_loop(
        0, tiling.num_tiles, lambda r, carry: row_tile(r, col_index, carry), carry)
    if axes:
      carry = dict(carry, block=jax.lax.ppermute(carry["block"], axes, permutation))
    return carry

  return jax.lax.fori_loop(0, num_shards, step, carry)


def _forward_kernel(inputs, log_temp, *, axes, num_shards: int, tile_size: int):
  """Per shard: (loss sum, metric sums) psummed, and local row/column log negative masses."""
  x, y, ids = inputs["x"], inputs["y"], inputs.get("ids")
  tiling = _Tiling.of(inputs, tile_size)
  local, tile = tiling.local, tiling.tile
  scale = jnp.exp(log_temp)
  shard = common.shard_index(axes)
  positive_cosine = jnp.sum(x * y, axis=-1)
  positive = scale * positive_cosine
  row_index = shard * local + jnp.arange(local)

  empty = common.varying(dict(
      peak=jnp.full((local,), _NEG_INF), total=jnp.zeros((local,)), scalar=jnp.zeros(())), axes)
  block = dict(y=y, positive=positive, col_peak=empty["peak"], col_total=empty["total"])
  if "hard" in inputs:
    block["hard"] = inputs["hard"].reshape(tiling.hard_count, x.shape[1])
  if ids is not None:
    block["ids"] = ids
  carry = dict(block=block, row_peak=empty["peak"], row_total=empty["total"],
               negative_cosine=empty["scalar"], negative_pairs=empty["scalar"])

  def row_tile(r, col_index, carry):
    r_start, r_fresh = _tile(r, tile, local)
    x_r, pos_r = _slice(x, r_start, tile), _slice(positive, r_start, tile)
    rows_r = _slice(row_index, r_start, tile)
    ids_r = None if ids is None else _slice(ids, r_start, tile)

    def col_tile(c, state):
      block, row_stats, neg_cos, neg_pairs = state
      c_start, c_fresh = _tile(c, tile, local)
      y_c, pos_c = _slice(block["y"], c_start, tile), _slice(block["positive"], c_start, tile)
      ids_c = None if ids is None else _slice(block["ids"], c_start, tile)
      is_negative = _tile_negatives(
          rows_r, _slice(col_index, c_start, tile), ids_r, ids_c, r_fresh, c_fresh)
      cosine = x_r @ y_c.T
      logits = scale * cosine
      row_stats = _merge_online(
          *row_stats, jnp.where(is_negative, logits - pos_r[:, None], _NEG_INF), axis=1)
      col_peak, col_total = _merge_online(
          _slice(block["col_peak"], c_start, tile), _slice(block["col_total"], c_start, tile),
          jnp.where(is_negative, logits - pos_c[None, :], _NEG_INF), axis=0)
      block = dict(block, col_peak=_update(block["col_peak"], col_peak, c_start),
                   col_total=_update(block["col_total"], col_total, c_start))
      neg_cos = neg_cos + jnp.sum(jnp.where(is_negative, cosine, 0.0))
      neg_pairs = neg_pairs + jnp.sum(is_negative, dtype=jnp.float32)
      return block, row_stats, neg_cos, neg_pairs

    def hard_tile(h, row_stats):
      h_start, h_fresh = _tile(h, tiling.hard_tile, tiling.hard_count)
      logits = scale * (x_r @ _slice(carry["block"]["hard"], h_start, tiling.hard_tile).T)
      valid = r_fresh[:, None] & h_fresh[None, :]
      return _merge_online(*row_stats, jnp.where(valid, logits - pos_r[:, None], _NEG_INF), axis=1)

    row_stats = (_slice(carry["row_peak"], r_start, tile), _slice(carry["row_total"], r_start, tile))
    block, row_stats, neg_cos, neg_pairs = jax.lax.fori_loop(
        0, tiling.num_tiles, col_tile,
        (carry["block"], row_stats, carry["negative_cosine"], carry["negative_pairs"]))
    if tiling.num_hard_tiles:
      row_stats = jax.lax.fori_loop(0, tiling.num_hard_tiles, hard_tile, row_stats)
    # Rows the clamped last tile shares with the previous one saw only -inf: unchanged.
    return dict(block=block, negative_cosine=neg_cos, negative_pairs=neg_pairs,
                row_peak=_update(carry["row_peak"], row_stats[0], r_start),
                row_total=_update(carry["row_total"], row_stats[1], r_start))

  carry = _ring_lap(row_tile, carry, tiling=tiling, axes=axes, num_shards=num_shards)
  block = carry["block"]
  row_mass = carry["row_peak"] + jnp.log(carry["row_total"])
  col_mass = block["col_peak"] + jnp.log(block["col_total"])
  loss_sum = jnp.sum(jax.nn.softplus(row_mass)) + jnp.sum(jax.nn.softplus(col_mass))
  sums = common.MetricSums(
      # The positive beats every negative iff the best shifted negative logit is < 0.
      correct_x_to_y=jnp.sum(carry["row_peak"] < 0, dtype=jnp.float32),
      correct_y_to_x=jnp.sum(block["col_peak"] < 0, dtype=jnp.float32),
      positive_cosine=jnp.sum(positive_cosine),
      negative_cosine=carry["negative_cosine"],
      negative_pairs=carry["negative_pairs"],
  )
  loss_sum, sums = common.psum((loss_sum, sums), axes)
  return loss_sum, sums, row_mass, col_mass


def _backward_kernel(inputs, log_temp, row_mass, col_mass, weight, *, axes, num_shards: int,
                     tile_size: int):
  """Per shard: gradients of `weight * (sum of the 2B row losses)` w.r.t. the local inputs
  and (psummed) log_temp.

  With l the logits and z the log negative masses saved by the forward, the
  derivative of the row losses w.r.t. a negative logit l_ij is
    exp(l_ij - l_ii - softplus(z_row_i)) + exp(l_ij - l_jj - softplus(z_col_j)),
  and w.r.t. a positive logit l_ii it is -(sigmoid(z_row_i) + sigmoid(z_col_i)),
  which stays accurate where 1 - p_positive would round away.
  """
  x, y, ids = inputs["x"], inputs["y"], inputs.get("ids")
  tiling = _Tiling.of(inputs, tile_size)
  local, tile = tiling.local, tiling.tile
  scale = jnp.exp(log_temp)
  shard = common.shard_index(axes)
  positive = scale * jnp.sum(x * y, axis=-1)
  row_index = shard * local + jnp.arange(local)
  # A negative's probability is exp(logit - offset), offset = positive + softplus(z).
  row_offset = positive + jax.nn.softplus(row_mass)

  zeros = common.varying(dict(
      x=jnp.zeros(x.shape), y=jnp.zeros(y.shape), hard=jnp.zeros((tiling.hard_count, x.shape[1])),
      scalar=jnp.zeros(())), axes)
  block = dict(y=y, col_offset=positive + jax.nn.softplus(col_mass), dy=zeros["y"])
  if "hard" in inputs:
    block.update(hard=inputs["hard"].reshape(tiling.hard_count, x.shape[1]), d_hard=zeros["hard"])
  if ids is not None:
    block["ids"] = ids
  carry = dict(block=block, dx=zeros["x"], d_log_temp=zeros["scalar"])

  def row_tile(r, col_index, carry):
    r_start, r_fresh = _tile(r, tile, local)
    x_r, offset_r = _slice(x, r_start, tile), _slice(row_offset, r_start, tile)
    rows_r = _slice(row_index, r_start, tile)
    ids_r = None if ids is None else _slice(ids, r_start, tile)

    def col_tile(c, state):
      block, dx_r, d_log_temp = state
      c_start, c_fresh = _tile(c, tile, local)
      y_c, offset_c = _slice(block["y"], c_start, tile), _slice(block["col_offset"], c_start, tile)
      ids_c = None if ids is None else _slice(block["ids"], c_start, tile)
      is_negative = _tile_negatives(
          rows_r, _slice(col_index, c_start, tile), ids_r, ids_c, r_fresh, c_fresh)
      logits = scale * (x_r @ y_c.T)
      masked = jnp.where(is_negative, logits, _NEG_INF)
      d_logits = weight * (jnp.exp(masked - offset_r[:, None]) + jnp.exp(masked - offset_c[None, :]))
      dy_c = _slice(block["dy"], c_start, tile) + scale * (d_logits.T @ x_r)
      block = dict(block, dy=_update(block["dy"], dy_c, c_start))
      return (block, dx_r + scale * (d_logits @ y_c),
              d_log_temp + jnp.sum(jnp.where(is_negative, d_logits * logits, 0.0)))

    def hard_tile(h, state):
      block, dx_r, d_log_temp = state
      h_start, h_fresh = _tile(h, tiling.hard_tile, tiling.hard_count)
      hard_h = _slice(block["hard"], h_start, tiling.hard_tile)
      logits = scale * (x_r @ hard_h.T)
      valid = r_fresh[:, None] & h_fresh[None, :]
      d_logits = weight * jnp.exp(jnp.where(valid, logits, _NEG_INF) - offset_r[:, None])
      d_hard_h = _slice(block["d_hard"], h_start, tiling.hard_tile) + scale * (d_logits.T @ x_r)
      block = dict(block, d_hard=_update(block["d_hard"], d_hard_h, h_start))
      return (block, dx_r + scale * (d_logits @ hard_h),
              d_log_temp + jnp.sum(jnp.where(valid, d_logits * logits, 0.0)))

    state = (carry["block"], _slice(carry["dx"], r_start, tile), carry["d_log_temp"])
    state = jax.lax.fori_loop(0, tiling.num_tiles, col_tile, state)
    if tiling.num_hard_tiles:
      state = jax.lax.fori_loop(0, tiling.num_hard_tiles, hard_tile, state)
    block, dx_r, d_log_temp = state
    # Rows the clamped last tile shares with the previous one got zero updates.
    return dict(block=block, dx=_update(carry["dx"], dx_r, r_start), d_log_temp=d_log_temp)

  carry = _ring_lap(row_tile, carry, tiling=tiling, axes=axes, num_shards=num_shards)
  block = carry["block"]
  # The positive pairs, all local.
  d_positive = -weight * (jax.nn.sigmoid(row_mass) + jax.nn.sigmoid(col_mass))
  dx = carry["dx"] + scale * d_positive[:, None] * y
  dy = block["dy"] + scale * d_positive[:, None] * x
  d_log_temp = common.psum(carry["d_log_temp"] + jnp.sum(d_positive * positive), axes)
  grads = dict(x=dx, y=dy)
  if "hard" in inputs:
    grads["hard"] = block["d_hard"].reshape(inputs["hard"].shape)
  return grads, d_log_temp
