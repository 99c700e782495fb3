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
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Symmetric InfoNCE over the global batch, sharded over `axes` of `mesh`.

  Args:
    inputs: 'x', 'y' float32 [B, d]; optional 'hard' float32 [B, H, d] and 'ids' int [B].
    log_temp: float32 scalar, replicated.
    mesh, axes: the mesh and its batch axes; axes=() runs on one device.

  Returns:
    (loss, metrics) as `embed_jax.losses.contrastive_loss` describes.
  """
  batch = inputs["x"].shape[0]
  kernel = functools.partial(_local_sums, batch=batch, axes=axes)
  in_specs = (jax.tree.map(lambda _: P(axes), inputs), P())
  sharded = common.shard_over_batch(kernel, mesh, axes, in_specs, (P(), P()))
  loss_sum, sums = sharded(inputs, log_temp)
  return loss_sum / (2 * batch), common.finalize_metrics(sums, batch, log_temp)


def _local_sums(inputs, log_temp, *, batch: int, axes: common.BatchAxes):
  """Per shard: (psummed loss sum over 2B rows, psummed metric sums)."""
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

  # x -> y: local x rows against every y and every hard negative.
  cosine_x_to_y = x @ gather(y).T
  shifted = [jnp.where(is_negative, scale * cosine_x_to_y - positive[:, None], -jnp.inf)]
  if "hard" in inputs:
    hard = gather(inputs["hard"]).reshape(-1, x.shape[1])
    shifted.append(scale * (x @ hard.T) - positive[:, None])
  shifted_x_to_y = jnp.concatenate(shifted, axis=1)
  # y -> x: local y rows against every x; pair (j, i) is masked exactly as (i, j).
  shifted_y_to_x = jnp.where(is_negative, scale * (y @ gather(x).T) - positive[:, None], -jnp.inf)

  loss_sum = (jnp.sum(jax.nn.softplus(_log_negative_mass(shifted_x_to_y)))
              + jnp.sum(jax.nn.softplus(_log_negative_mass(shifted_y_to_x))))

  no_grad = jax.lax.stop_gradient
  sums = common.MetricSums(
      correct_x_to_y=jnp.sum(no_grad(jnp.max(shifted_x_to_y, axis=1)) < 0, dtype=jnp.float32),
      correct_y_to_x=jnp.sum(no_grad(jnp.max(shifted_y_to_x, axis=1)) < 0, dtype=jnp.float32),
      positive_cosine=no_grad(jnp.sum(positive_cosine)),
      negative_cosine=no_grad(jnp.sum(jnp.where(is_negative, cosine_x_to_y, 0.0))),
      negative_pairs=jnp.sum(is_negative, dtype=jnp.float32),
  )
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
