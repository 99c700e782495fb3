"""The default sharded loss: all_gather the embeddings, score local rows against all columns.

Each of the K shards of the batch axes holds n = B/K rows of x and y. It gathers
all B embeddings of both sides (not logits), scores its n x rows against the B y
columns (and every hard negative) and its n y rows against the B x columns, and
the positive of local row i sits at column k*n + i. Autodiff does the backward:
the transpose of all_gather is a reduce-scatter, so each shard receives every
other shard's pull on its own embeddings: exact gradients, no stop_gradient.
Memory per shard: about 2*n*B logits and 2*B*d gathered embeddings.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from embed_jax.losses import common


def gather_loss(
    inputs: dict[str, jax.Array],
    log_temp: jax.Array,
    *,
    mesh: jax.sharding.Mesh | None,
    axes: common.BatchAxes,
    terms: common.Terms = common.Terms(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The contrastive loss of `terms` over the global batch, sharded over `axes` of `mesh`.

  Args:
    inputs: 'x', 'y' float32 [B, d]; optional 'hard' float32 [B, H, d], 'valid'
      bool [B, H] (which hard negatives are real), 'ids' int [B], and the guide's
      'gx', 'gy' [B, dg] and 'gh' [B, H, dg].
    log_temp: float32 scalar, replicated.
    mesh, axes: the mesh and its batch axes; axes=() runs on one device.
    terms: directions, partition and false-negative rules.

  Returns:
    (loss, metrics) as `embed_jax.losses.contrastive_loss` describes.
  """
  batch = inputs["x"].shape[0]
  kernel = functools.partial(_local_sums, batch=batch, axes=axes, terms=terms)
  in_specs = (jax.tree.map(lambda _: P(axes), inputs), P())
  sharded = common.shard_over_batch(kernel, mesh, axes, in_specs, (P(), P()))
  loss_sum, sums = sharded(inputs, log_temp)
  return loss_sum / terms.normaliser(batch), common.finalize_metrics(sums, batch, log_temp)


def _local_sums(inputs, log_temp, *, batch: int, axes: common.BatchAxes, terms: common.Terms):
  """Per shard: (psummed sum of the row losses, psummed metric sums)."""
  x, y = inputs["x"], inputs["y"]
  ids = inputs.get("ids")
  local = x.shape[0]

  def gather(a):
    return jax.lax.all_gather(a, axes, tiled=True) if axes else a

  scale = jnp.exp(log_temp)
  rows = common.shard_index(axes) * local + jnp.arange(local)
  is_negative = common.negative_pair_mask(
      rows, jnp.arange(batch), ids, None if ids is None else gather(ids))
  positive_cosine = jnp.sum(x * y, axis=-1)
  positive = scale * positive_cosine
  gx, gy = inputs.get("gx"), inputs.get("gy")
  guide_threshold = fn_threshold = None
  if gx is not None:
    guide_threshold = terms.threshold(jnp.sum(gx * gy, axis=-1), terms.guide_margin)
  if terms.false_negative_margin is not None:
    fn_threshold = terms.threshold(positive_cosine, terms.false_negative_margin)
  counts = {"masked": [], "candidates": []}

  def direction(name, rows_, cols, guide_rows, guide_cols, candidates):
    """Shifted logits [local, c] of one direction (-inf = not a negative) and the cosines."""
    cosine = rows_ @ cols.T
    guide_scores = None if guide_cols is None else guide_rows @ guide_cols.T
    removed = common.removed_by_rules(terms, cosine, guide_scores, fn_threshold, guide_threshold)
    keep = candidates if removed is None else candidates & ~removed
    if removed is not None and terms.uses(name):
      counts["masked"].append(jnp.sum(candidates & removed, dtype=jnp.float32))
      counts["candidates"].append(jnp.sum(jnp.broadcast_to(candidates, keep.shape),
                                          dtype=jnp.float32))
    return jnp.where(keep, scale * cosine - positive[:, None], -jnp.inf), cosine

  x_all, y_all = gather(x), gather(y)
  gx_all = None if gx is None else gather(gx)
  gy_all = None if gy is None else gather(gy)
  # x -> y: local x rows against every y and every hard negative.
  shifted_xy, cosine_xy = direction("x->y", x, y_all, gx, gy_all, is_negative)
  if "hard" in inputs:
    hard = gather(inputs["hard"]).reshape(-1, x.shape[1])
    valid = (gather(inputs["valid"]).reshape(1, -1) if "valid" in inputs
             else jnp.ones((1, hard.shape[0]), bool))
    guide_hard = gather(inputs["gh"]).reshape(hard.shape[0], -1) if "gh" in inputs else None
    shifted_hard, _ = direction("x->y", x, hard, gx, guide_hard, valid)
    shifted_xy = jnp.concatenate([shifted_xy, shifted_hard], axis=1)
  # y -> x: local y rows against every x; pair (j, i) is a candidate exactly as (i, j).
  shifted = {"x->y": shifted_xy,
             "y->x": direction("y->x", y, x_all, gy, gx_all, is_negative)[0]}
  if terms.uses("x->x"):
    shifted["x->x"] = direction("x->x", x, x_all, gx, gx_all, is_negative)[0]
  if terms.uses("y->y"):
    shifted["y->y"] = direction("y->y", y, y_all, gy, gy_all, is_negative)[0]

  used = [shifted[d] for d in terms.directions]
  if terms.partition == "joint":
    loss_sum = jnp.sum(jax.nn.softplus(_log_negative_mass(jnp.concatenate(used, axis=1))))
  else:
    loss_sum = sum(jnp.sum(jax.nn.softplus(_log_negative_mass(s))) for s in used)

  no_grad = jax.lax.stop_gradient
  sums = common.MetricSums(
      correct_x_to_y=jnp.sum(no_grad(jnp.max(shifted["x->y"], axis=1)) < 0, dtype=jnp.float32),
      correct_y_to_x=jnp.sum(no_grad(jnp.max(shifted["y->x"], axis=1)) < 0, dtype=jnp.float32),
      positive_cosine=no_grad(jnp.sum(positive_cosine)),
      negative_cosine=no_grad(jnp.sum(jnp.where(is_negative, cosine_xy, 0.0))),
      negative_pairs=jnp.sum(is_negative, dtype=jnp.float32),
  )
  if terms.masking:
    zero = jnp.zeros((), jnp.float32)
    sums["masked_pairs"] = sum(counts["masked"], zero)
    sums["candidate_pairs"] = sum(counts["candidates"], zero)
  return common.psum((loss_sum, sums), axes)


def _log_negative_mass(shifted: jax.Array) -> jax.Array:
  """log sum_j exp(shifted[:, j]) per row, -inf (with zero gradient) where all are -inf.

  `shifted` holds each row's negative logits minus its positive logit, so the
  row's cross-entropy is softplus of this, accurate in float32 even when tiny.
  """
  peak = jax.lax.stop_gradient(jnp.max(shifted, axis=1, keepdims=True))
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
  total = jnp.sum(jnp.exp(shifted - peak), axis=1)
  has_negatives = total > 0
  mass = jnp.log(jnp.where(has_negatives, total, 1.0)) + peak[:, 0]
  return jnp.where(has_negatives, mass, -jnp.inf)
