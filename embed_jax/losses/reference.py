"""Symmetric InfoNCE on global arrays, written as plainly as possible: the test oracle.

It materialises the whole [B, B] logit matrix (and [B, B*H] for hard negatives),
so it is meant for tests and small batches; `gather` and `ring` must agree with it.
Its loss is `logsumexp - positive` in float32, which loses relative accuracy when
the loss is tiny (strongly paired data); the sharded losses avoid that.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from embed_jax.losses import common


def reference_loss(
    x: jax.Array,
    y: jax.Array,
    log_temp: jax.Array,
    hard_negatives: jax.Array | None = None,
    mask_duplicates: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy over the B rows x->y and the B columns y->x.

  Args:
    x, y: float [B, d]; pair i is (x_i, y_i).
    log_temp: float scalar; logits are exp(log_temp) * x @ y.T.
    hard_negatives: optional float [B, H, d]; all B*H are extra columns of every x row.
    mask_duplicates: optional int [B] y-text ids; pairs i != j with equal ids are
      masked out of both directions.

  Returns:
    (loss, metrics): the scalar loss and the dict of `common.finalize_metrics`.
  """
  batch = x.shape[0]
  scale = jnp.exp(log_temp)
  cosine = x @ y.T
  logits = scale * cosine
  is_positive = jnp.eye(batch, dtype=bool)
  index = jnp.arange(batch)
  is_negative = common.negative_pair_mask(index, index, mask_duplicates, mask_duplicates)
  masked = jnp.where(is_positive | is_negative, logits, -jnp.inf)

  row_logits = masked
  hard_logits = jnp.full((batch, 0), -jnp.inf)
  if hard_negatives is not None:
    hard_logits = scale * x @ hard_negatives.reshape(-1, x.shape[1]).T
    row_logits = jnp.concatenate([masked, hard_logits], axis=1)
  x_to_y = -jnp.diagonal(jax.nn.log_softmax(row_logits, axis=1)[:, :batch])
  y_to_x = -jnp.diagonal(jax.nn.log_softmax(masked, axis=0))
  loss = (jnp.sum(x_to_y) + jnp.sum(y_to_x)) / (2 * batch)

  positive = jnp.diagonal(logits)
  negatives_only = jnp.where(is_positive, -jnp.inf, masked)
  best_row_negative = jnp.max(jnp.concatenate([negatives_only, hard_logits], axis=1), axis=1)
  best_col_negative = jnp.max(negatives_only, axis=0)
  sums = common.MetricSums(
      correct_x_to_y=jnp.sum(positive > best_row_negative, dtype=jnp.float32),
      correct_y_to_x=jnp.sum(positive > best_col_negative, dtype=jnp.float32),
      positive_cosine=jnp.sum(jnp.diagonal(cosine)),
      negative_cosine=jnp.sum(jnp.where(is_negative, cosine, 0.0)),
      negative_pairs=jnp.sum(is_negative, dtype=jnp.float32),
  )
  return loss, common.finalize_metrics(sums, batch, log_temp)
