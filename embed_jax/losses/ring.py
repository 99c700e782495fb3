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

The other terms ride along: "x->x" makes the block carry its x rows (and an
accumulator for their gradient), "y->y" scores home y rows against the block's;
a guide's embeddings (gx, gy, and those of the hard negatives) travel with the
block they belong to, together with each column's guide and margin thresholds,
so the guide's scores are recomputed tile by tile like the logits.

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
    terms: common.Terms = common.Terms(),
    prefix_dim: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The contrastive loss of `terms` over the global batch by a ppermute ring over `axes`.

  Args:
    inputs: 'x', 'y' float32 [B, d]; optional 'hard' float32 [B, H, d], 'valid'
      bool [B, H], 'ids' int [B], guide 'gx', 'gy' [B, dg] and 'gh' [B, H, dg].
    log_temp: float32 scalar, replicated.
    mesh, axes: the mesh and its batch axes; axes=() runs the tiled loop on one device.
    tile_size: rows (and columns) of the largest logit tile held at a time.
    terms: directions, partition and false-negative rules.
    prefix_dim: score the first `prefix_dim` features of x, y and the hard
      negatives, re-normalised (a Matryoshka prefix). The prefix is taken
      inside each shard's kernels and its normalisation differentiated there,
      so no prefix copy outlives a kernel and the residuals are the inputs.

  Returns:
    (loss, metrics) as `embed_jax.losses.contrastive_loss` describes.
  """
  return _ring_loss_fn(mesh, axes, tile_size, terms, prefix_dim)(inputs, log_temp)


# Inputs that get no gradient: ids and validity (integers / booleans) and the guide's
# embeddings (a frozen model's; their cotangent is zero).
_NO_GRAD_KEYS = ("ids", "valid", "gx", "gy", "gh")


@functools.lru_cache(maxsize=None)
def _ring_loss_fn(mesh, axes: common.BatchAxes, tile_size: int, terms: common.Terms,
                  prefix_dim: int | None):
  """The custom-VJP loss for one (mesh, axes, tile, terms, prefix) configuration."""
  num_shards = math.prod(mesh.shape[a] for a in axes) if axes else 1
  config = dict(axes=axes, num_shards=num_shards, tile_size=tile_size, terms=terms,
                prefix_dim=prefix_dim)

  def run_forward(inputs, log_temp):
    specs = jax.tree.map(lambda _: P(axes), inputs)
    kernel = functools.partial(_forward_kernel, **config)
    sharded = common.shard_over_batch(kernel, mesh, axes, (specs, P()), (P(), P(), P(axes)))
    loss_sum, sums, masses = sharded(inputs, log_temp)
    batch = inputs["x"].shape[0]
    metrics = common.finalize_metrics(sums, batch, log_temp)
    return loss_sum / terms.normaliser(batch), metrics, masses

  @jax.custom_vjp
  def loss_fn(inputs, log_temp):
    loss, metrics, _ = run_forward(inputs, log_temp)
    return loss, metrics

  def loss_fwd(inputs, log_temp):
    loss, metrics, masses = run_forward(inputs, log_temp)
    return (loss, metrics), (inputs, log_temp, masses)

  def loss_bwd(residuals, cotangents):
    inputs, log_temp, masses = residuals
    loss_cotangent = cotangents[0]  # metrics carry no gradient
    batch = inputs["x"].shape[0]
    weight = loss_cotangent / terms.normaliser(batch)
    specs = jax.tree.map(lambda _: P(axes), inputs)
    grad_specs = {k: v for k, v in specs.items() if k in ("x", "y", "hard")}
    kernel = functools.partial(_backward_kernel, **config)
    sharded = common.shard_over_batch(
        kernel, mesh, axes, (specs, P(), P(axes), P()), (grad_specs, P()))
    grads, d_log_temp = sharded(inputs, log_temp, masses, weight)
    for key in _NO_GRAD_KEYS:
      if key in inputs:
        grads[key] = None if key in ("ids", "valid") else jnp.zeros_like(inputs[key])
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


# Per-pair arrays of length n: they are sliced by row tiles at home and by column
# tiles in a visiting block; hard-negative arrays (length n*H) by hard tiles.
_PAIR_KEYS = ("x", "y", "gx", "gy", "positive", "guide_threshold", "fn_threshold", "ids",
              "col_peak", "col_total", "col_offset", "dx", "dy")
_HARD_KEYS = ("hard", "valid", "gh", "d_hard")


def _slices(arrays: dict, keys, start, size: int) -> dict:
  return {k: _slice(arrays[k], start, size) for k in keys if k in arrays}


def _home(inputs, scale, terms: common.Terms, row_index) -> tuple[dict[str, jax.Array], jax.Array]:
  """The shard's own pairs (embeddings, positive logits [n], the rules' thresholds), and the
  positive cosines [n]."""
  x, y = inputs["x"], inputs["y"]
  positive_cosine = jnp.sum(x * y, axis=-1)
  home = dict(x=x, y=y, positive=scale * positive_cosine, rows=row_index)
  for key in ("gx", "gy", "ids"):
    if key in inputs:
      home[key] = inputs[key]
  if "gx" in inputs:
    home["guide_threshold"] = terms.threshold(
        jnp.sum(inputs["gx"] * inputs["gy"], axis=-1), terms.guide_margin)
  if terms.false_negative_margin is not None:
    home["fn_threshold"] = terms.threshold(positive_cosine, terms.false_negative_margin)
  return home, positive_cosine


def _block(inputs, home, tiling: _Tiling, terms: common.Terms, axes) -> dict[str, jax.Array]:
  """What travels the ring: the columns' side of every term."""
  block = {k: home[k] for k in ("y", "positive", "ids", "gy", "guide_threshold", "fn_threshold")
           if k in home}
  if terms.uses("x->x"):
    block.update({k: home[k] for k in ("x", "gx") if k in home})
  dim = inputs["x"].shape[1]
  if "hard" in inputs:
    block["hard"] = inputs["hard"].reshape(tiling.hard_count, dim)
    block["valid"] = (inputs["valid"].reshape(-1) if "valid" in inputs
                      else common.varying(jnp.ones((tiling.hard_count,), bool), axes))
    if "gh" in inputs:
      block["gh"] = inputs["gh"].reshape(tiling.hard_count, -1)
  return block


def _pair_tiles(terms: common.Terms, scale, home_r, block_c, is_negative):
  """The in-batch logits of a (row tile, column tile): {direction: (logits, keep, removed)}.

  "y->x" shares the x->y logits (x_r . y_c) with the thresholds of the
  columns; "x->x" and "y->y" score home rows against the block's x / y.
  """
  guided = "gy" in block_c

  def one(rows, cols, guide_rows, guide_cols, axis):
    cosine = rows @ cols.T
    guide_scores = guide_rows @ guide_cols.T if guided else None
    thresholds = home_r if axis == 1 else block_c
    removed = common.removed_by_rules(terms, cosine, guide_scores, thresholds.get("fn_threshold"),
                                      thresholds.get("guide_threshold"), axis=axis)
    keep = is_negative if removed is None else is_negative & ~removed
    return scale * cosine, keep, removed, cosine

  tiles = {}
  guide_x, guide_y = home_r.get("gx"), block_c.get("gy")
  tiles["x->y"] = one(home_r["x"], block_c["y"], guide_x, guide_y, 1)
  logits, _, _, cosine = tiles["x->y"]
  guide_scores = guide_x @ guide_y.T if guided else None
  removed = common.removed_by_rules(terms, cosine, guide_scores, block_c.get("fn_threshold"),
                                    block_c.get("guide_threshold"), axis=0)
  tiles["y->x"] = (logits, is_negative if removed is None else is_negative & ~removed, removed,
                   cosine)
  if terms.uses("x->x"):
    tiles["x->x"] = one(home_r["x"], block_c["x"], guide_x, block_c.get("gx"), 1)
  if terms.uses("y->y"):
    tiles["y->y"] = one(home_r["y"], block_c["y"], home_r.get("gy"), guide_y, 1)
  return tiles


def _hard_tile(terms: common.Terms, scale, home_r, block_h, valid):
  """x_r against a tile of hard negatives: (logits, keep, removed)."""
  cosine = home_r["x"] @ block_h["hard"].T
  guide_scores = home_r["gx"] @ block_h["gh"].T if "gh" in block_h else None
  removed = common.removed_by_rules(terms, cosine, guide_scores, home_r.get("fn_threshold"),
                                    home_r.get("guide_threshold"))
  return scale * cosine, valid if removed is None else valid & ~removed, removed


def _count(sums, terms, name, candidates, removed):
  """Adds a tile's guided-masking counts (directions the loss uses only)."""
  if removed is None or not terms.uses(name):
    return sums
  return dict(sums, masked=sums["masked"] + jnp.sum(candidates & removed, dtype=jnp.float32),
              candidates=sums["candidates"] + jnp.sum(candidates, dtype=jnp.float32))


def _row_directions(terms: common.Terms) -> tuple[str, ...]:
  """The directions whose statistics stay at home (x->y is always kept, for the metrics)."""
  return ("x->y",) + tuple(d for d in ("x->x", "y->y") if terms.uses(d))


_PREFIXED = ("x", "y", "hard")


def _normalised_prefix(a: jax.Array, dim: int) -> jax.Array:
  a = a[..., :dim]
  return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def _take_prefix(inputs, prefix_dim):
  """inputs with x, y, hard cut to their normalised first `prefix_dim` features (None: as is)."""
  if prefix_dim is None:
    return inputs
  return dict(inputs, **{k: _normalised_prefix(inputs[k], prefix_dim)
                         for k in _PREFIXED if k in inputs})


def _prefix_vjp(raw: jax.Array, grad: jax.Array, prefix_dim: int) -> jax.Array:
  """The gradient w.r.t. `raw` [..., d] of a loss whose gradient w.r.t. its normalised prefix
  is `grad` [..., prefix_dim]: (g - u (u . g)) / |a| on the prefix, zero beyond it."""
  a = raw[..., :prefix_dim]
  norm = jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  u = a / norm
  out = (grad - u * jnp.sum(u * grad, axis=-1, keepdims=True)) / norm
  pad = [(0, 0)] * (raw.ndim - 1) + [(0, raw.shape[-1] - prefix_dim)]
  return jnp.pad(out, pad)


def _forward_kernel(inputs, log_temp, *, axes, num_shards: int, tile_size: int,
                    terms: common.Terms, prefix_dim: int | None = None):
  """Per shard: (loss sum, metric sums) psummed, and the local log negative mass of each
  direction ({direction: [n]})."""
  inputs = _take_prefix(inputs, prefix_dim)
  tiling = _Tiling.of(inputs, tile_size)
  local, tile = tiling.local, tiling.tile
  scale = jnp.exp(log_temp)
  row_index = common.shard_index(axes) * local + jnp.arange(local)
  home, positive_cosine = _home(inputs, scale, terms, row_index)
  row_dirs = _row_directions(terms)

  empty = common.varying(dict(
      peak=jnp.full((local,), _NEG_INF), total=jnp.zeros((local,)), scalar=jnp.zeros(())), axes)
  block = dict(_block(inputs, home, tiling, terms, axes), col_peak=empty["peak"],
               col_total=empty["total"])
  sums = {k: empty["scalar"] for k in ("negative_cosine", "negative_pairs", "masked", "candidates")}
  carry = dict(block=block, peak={d: empty["peak"] for d in row_dirs},
               total={d: empty["total"] for d in row_dirs}, sums=sums)

  def row_tile(r, col_index, carry):
    r_start, r_fresh = _tile(r, tile, local)
    home_r = _slices(home, _PAIR_KEYS + ("rows",), r_start, tile)
    pos_r = home_r["positive"]

    def col_tile(c, state):
      block, stats, sums = state
      c_start, c_fresh = _tile(c, tile, local)
      block_c = _slices(block, _PAIR_KEYS, c_start, tile)
      is_negative = _tile_negatives(home_r["rows"], _slice(col_index, c_start, tile),
                                    home_r.get("ids"), block_c.get("ids"), r_fresh, c_fresh)
      tiles = _pair_tiles(terms, scale, home_r, block_c, is_negative)
      stats = dict(stats)
      for d in row_dirs:
        logits, keep = tiles[d][:2]
        stats[d] = _merge_online(*stats[d], jnp.where(keep, logits - pos_r[:, None], _NEG_INF),
                                 axis=1)
      logits, keep, _, cosine = tiles["y->x"]
      col_peak, col_total = _merge_online(
          block_c["col_peak"], block_c["col_total"],
          jnp.where(keep, logits - block_c["positive"][None, :], _NEG_INF), axis=0)
      block = dict(block, col_peak=_update(block["col_peak"], col_peak, c_start),
                   col_total=_update(block["col_total"], col_total, c_start))
      sums = dict(sums, negative_cosine=sums["negative_cosine"]
                  + jnp.sum(jnp.where(is_negative, cosine, 0.0)),
                  negative_pairs=sums["negative_pairs"] + jnp.sum(is_negative, dtype=jnp.float32))
      for d in terms.directions:
        sums = _count(sums, terms, d, is_negative, tiles[d][2])
      return block, stats, sums

    def hard_tile(h, state):
      stats, sums = state
      h_start, h_fresh = _tile(h, tiling.hard_tile, tiling.hard_count)
      block_h = _slices(carry["block"], _HARD_KEYS, h_start, tiling.hard_tile)
      valid = r_fresh[:, None] & (h_fresh & block_h["valid"])[None, :]
      logits, keep, removed = _hard_tile(terms, scale, home_r, block_h, valid)
      stats = dict(stats, **{"x->y": _merge_online(
          *stats["x->y"], jnp.where(keep, logits - pos_r[:, None], _NEG_INF), axis=1)})
      return stats, _count(sums, terms, "x->y", valid, removed)

    stats = {d: (_slice(carry["peak"][d], r_start, tile), _slice(carry["total"][d], r_start, tile))
             for d in row_dirs}
    block, stats, sums = jax.lax.fori_loop(
        0, tiling.num_tiles, col_tile, (carry["block"], stats, carry["sums"]))
    if tiling.num_hard_tiles:
      stats, sums = jax.lax.fori_loop(0, tiling.num_hard_tiles, hard_tile, (stats, sums))
    # Rows the clamped last tile shares with the previous one saw only -inf: unchanged.
    return dict(block=block, sums=sums,
                peak={d: _update(carry["peak"][d], stats[d][0], r_start) for d in row_dirs},
                total={d: _update(carry["total"][d], stats[d][1], r_start) for d in row_dirs})

  carry = _ring_lap(row_tile, carry, tiling=tiling, axes=axes, num_shards=num_shards)
  block, sums = carry["block"], carry["sums"]
  masses = {d: carry["peak"][d] + jnp.log(carry["total"][d]) for d in row_dirs}
  masses["y->x"] = block["col_peak"] + jnp.log(block["col_total"])
  loss_sum = sum(jnp.sum(jax.nn.softplus(z)) for z in _loss_masses(masses, terms))
  metric_sums = common.MetricSums(
      # The positive beats every negative iff the best shifted negative logit is < 0.
      correct_x_to_y=jnp.sum(carry["peak"]["x->y"] < 0, dtype=jnp.float32),
      correct_y_to_x=jnp.sum(block["col_peak"] < 0, dtype=jnp.float32),
      positive_cosine=jnp.sum(positive_cosine),
      negative_cosine=sums["negative_cosine"],
      negative_pairs=sums["negative_pairs"],
  )
  if terms.masking:
    metric_sums.update(masked_pairs=sums["masked"], candidate_pairs=sums["candidates"])
  loss_sum, metric_sums = common.psum((loss_sum, metric_sums), axes)
  return loss_sum, metric_sums, masses


def _loss_masses(masses: dict[str, jax.Array], terms: common.Terms) -> list[jax.Array]:
  """The z of each row loss softplus(z): one per direction, or their log-sum (joint)."""
  used = [masses[d] for d in terms.directions]
  if terms.partition == "joint":
    return [functools.reduce(jnp.logaddexp, used)]
  return used


def _backward_kernel(inputs, log_temp, masses, weight, *, axes, num_shards: int,
                     tile_size: int, terms: common.Terms, prefix_dim: int | None = None):
  """Per shard: gradients of `weight * (sum of the row losses)` w.r.t. the local x, y, hard
  negatives and (psummed) log_temp.

  A row loss is softplus(z), z = log sum_neg exp(l_neg - l_pos) over its
  candidates (one direction's, or every direction's when joint), with z
  saved by the forward. Its derivative w.r.t. a candidate logit l is
  exp(l - l_pos - softplus(z)), and w.r.t. the positive logit -sigmoid(z),
  which stays accurate where 1 - p_positive would round away.
  """
  raw, inputs = inputs, _take_prefix(inputs, prefix_dim)
  x, y = inputs["x"], inputs["y"]
  tiling = _Tiling.of(inputs, tile_size)
  local, tile = tiling.local, tiling.tile
  scale = jnp.exp(log_temp)
  row_index = common.shard_index(axes) * local + jnp.arange(local)
  home, _ = _home(inputs, scale, terms, row_index)
  positive = home["positive"]
  # A candidate's gradient is weight * exp(logit - offset), offset = positive + softplus(z).
  if terms.partition == "joint":
    joint = _loss_masses(masses, terms)[0]
    offsets = {d: positive + jax.nn.softplus(joint) for d in common.DIRECTIONS}
    d_positive = -weight * jax.nn.sigmoid(joint)
  else:
    offsets = {d: positive + jax.nn.softplus(masses[d]) for d in terms.directions}
    d_positive = -weight * sum(jax.nn.sigmoid(masses[d]) for d in terms.directions)
  for d in terms.directions:
    if d != "y->x":
      home[f"offset {d}"] = offsets[d]

  zeros = common.varying(dict(
      x=jnp.zeros(x.shape), y=jnp.zeros(y.shape), hard=jnp.zeros((tiling.hard_count, x.shape[1])),
      scalar=jnp.zeros(())), axes)
  block = dict(_block(inputs, home, tiling, terms, axes), dy=zeros["y"])
  if terms.uses("y->x"):
    block["col_offset"] = offsets["y->x"]
  if terms.uses("x->x"):
    block["dx"] = zeros["x"]
  if "hard" in inputs:
    block["d_hard"] = zeros["hard"]
  carry = dict(block=block, dx=zeros["x"], d_log_temp=zeros["scalar"])
  if terms.uses("y->y"):
    carry["dy"] = zeros["y"]
  offset_keys = tuple(k for k in home if k.startswith("offset "))

  def grad_of(logits, keep, offset):
    return weight * jnp.exp(jnp.where(keep, logits, _NEG_INF) - offset)

  def row_tile(r, col_index, carry):
    r_start, r_fresh = _tile(r, tile, local)
    home_r = _slices(home, _PAIR_KEYS + ("rows",) + offset_keys, r_start, tile)
    accumulators = {k: _slice(carry[k], r_start, tile) for k in ("dx", "dy") if k in carry}

    def col_tile(c, state):
      block, acc, d_log_temp = state
      c_start, c_fresh = _tile(c, tile, local)
      block_c = _slices(block, _PAIR_KEYS, c_start, tile)
      is_negative = _tile_negatives(home_r["rows"], _slice(col_index, c_start, tile),
                                    home_r.get("ids"), block_c.get("ids"), r_fresh, c_fresh)
      tiles = _pair_tiles(terms, scale, home_r, block_c, is_negative)
      acc = dict(acc)

      def add(block, key, value):
        """Adds value [tile, d] to the block's accumulator rows of this column tile."""
        return dict(block, **{key: _update(block[key], _slice(block[key], c_start, tile) + value,
                                           c_start)})
      d_xy = None
      if terms.uses("x->y"):
        d_xy = grad_of(tiles["x->y"][0], tiles["x->y"][1], home_r["offset x->y"][:, None])
      if terms.uses("y->x"):
        d_yx = grad_of(tiles["y->x"][0], tiles["y->x"][1], block_c["col_offset"][None, :])
        d_xy = d_yx if d_xy is None else d_xy + d_yx
      if d_xy is not None:
        acc["dx"] = acc["dx"] + scale * (d_xy @ block_c["y"])
        block = add(block, "dy", scale * (d_xy.T @ home_r["x"]))
        d_log_temp = d_log_temp + jnp.sum(d_xy * tiles["x->y"][0])
      if terms.uses("x->x"):
        d = grad_of(tiles["x->x"][0], tiles["x->x"][1], home_r["offset x->x"][:, None])
        acc["dx"] = acc["dx"] + scale * (d @ block_c["x"])
        block = add(block, "dx", scale * (d.T @ home_r["x"]))
        d_log_temp = d_log_temp + jnp.sum(d * tiles["x->x"][0])
      if terms.uses("y->y"):
        d = grad_of(tiles["y->y"][0], tiles["y->y"][1], home_r["offset y->y"][:, None])
        acc["dy"] = acc["dy"] + scale * (d @ block_c["y"])
        block = add(block, "dy", scale * (d.T @ home_r["y"]))
        d_log_temp = d_log_temp + jnp.sum(d * tiles["y->y"][0])
      return block, acc, d_log_temp

    def hard_tile(h, state):
      block, acc, d_log_temp = state
      h_start, h_fresh = _tile(h, tiling.hard_tile, tiling.hard_count)
      block_h = _slices(block, _HARD_KEYS, h_start, tiling.hard_tile)
      valid = r_fresh[:, None] & (h_fresh & block_h["valid"])[None, :]
      logits, keep, _ = _hard_tile(terms, scale, home_r, block_h, valid)
      d = grad_of(logits, keep, home_r["offset x->y"][:, None])
      d_hard = block_h["d_hard"] + scale * (d.T @ home_r["x"])
      block = dict(block, d_hard=_update(block["d_hard"], d_hard, h_start))
      return (block, dict(acc, dx=acc["dx"] + scale * (d @ block_h["hard"])),
              d_log_temp + jnp.sum(d * logits))

    state = (carry["block"], accumulators, carry["d_log_temp"])
    state = jax.lax.fori_loop(0, tiling.num_tiles, col_tile, state)
    if tiling.num_hard_tiles and terms.uses("x->y"):
      state = jax.lax.fori_loop(0, tiling.num_hard_tiles, hard_tile, state)
    block, acc, d_log_temp = state
    # Rows the clamped last tile shares with the previous one got zero updates.
    return dict(carry, block=block, d_log_temp=d_log_temp,
                **{k: _update(carry[k], v, r_start) for k, v in acc.items()})

  carry = _ring_lap(row_tile, carry, tiling=tiling, axes=axes, num_shards=num_shards)
  block = carry["block"]
  # The positive pairs, all local.
  dx = carry["dx"] + block.get("dx", 0.0) + scale * d_positive[:, None] * y
  dy = carry.get("dy", 0.0) + block["dy"] + scale * d_positive[:, None] * x
  d_log_temp = common.psum(carry["d_log_temp"] + jnp.sum(d_positive * positive), axes)
  grads = dict(x=dx, y=dy)
  if "hard" in inputs:
    grads["hard"] = block["d_hard"].reshape(inputs["hard"].shape)
  if prefix_dim is not None:
    grads = {k: _prefix_vjp(raw[k], g, prefix_dim) for k, g in grads.items()}
  return grads, d_log_temp
