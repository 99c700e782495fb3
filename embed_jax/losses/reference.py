"""The contrastive loss on global arrays, written as plainly as possible: a dense oracle.

It materialises every [B, B] logit matrix (and [B, B*H] for hard negatives),
so it is meant for tests and small batches; `gather` and `ring` must agree with it.
Its loss is `logsumexp - positive` in float32, which loses relative accuracy when
the loss is tiny (strongly paired data); the sharded losses avoid that.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from embed_jax.losses import common


def reference_loss(
    inputs: dict[str, jax.Array],
    log_temp: jax.Array,
    terms: common.Terms = common.Terms(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss of `terms` over the B pairs: cross-entropies of the positive against its candidates.

  Args:
    inputs: 'x', 'y' float [B, d]; optional 'hard' [B, H, d] (all B*H are extra
      x->y candidates of every row), 'valid' bool [B, H], 'ids' int [B] (pairs
      i != j with equal ids are no candidates), guide 'gx', 'gy' [B, dg], 'gh' [B, H, dg].
    log_temp: float scalar; logits are exp(log_temp) * cosine.
    terms: directions, partition and false-negative rules.

  Returns:
    (loss, metrics): the scalar loss and the dict of `common.finalize_metrics`.
  """
  x, y = inputs["x"], inputs["y"]
  batch = x.shape[0]
  scale = jnp.exp(log_temp)
  index = jnp.arange(batch)
  ids = inputs.get("ids")
  is_negative = common.negative_pair_mask(index, index, ids, ids)
  positive_cosine = jnp.diagonal(x @ y.T)
  positive = scale * positive_cosine
  gx, gy = inputs.get("gx"), inputs.get("gy")
  guide_threshold = None if gx is None else terms.threshold(
      jnp.diagonal(gx @ gy.T), terms.guide_margin)
  fn_threshold = None if terms.false_negative_margin is None else terms.threshold(
      positive_cosine, terms.false_negative_margin)
  flat = lambda a: a.reshape(-1, a.shape[-1])

  # Each direction: (anchor-side embeddings, candidates, guide of both, which are candidates).
  hard = inputs.get("hard")
  candidates = {
      "x->y": [(x, y, gx, gy, is_negative)],
      "y->x": [(y, x, gy, gx, is_negative)],
      "x->x": [(x, x, gx, gx, is_negative)],
      "y->y": [(y, y, gy, gy, is_negative)],
  }
  if hard is not None:
    valid = inputs.get("valid", jnp.ones(hard.shape[:2], bool)).reshape(1, -1)
    guide_hard = flat(inputs["gh"]) if "gh" in inputs else None
    candidates["x->y"].append(
        (x, flat(hard), gx, guide_hard, jnp.broadcast_to(valid, (batch, valid.shape[1]))))

  logits, masked, considered = {}, jnp.zeros(()), jnp.zeros(())
  for name, parts in candidates.items():
    blocks = []
    for anchors, cols, guide_anchors, guide_cols, is_candidate in parts:
      cosine = anchors @ cols.T
      guide_scores = None if guide_cols is None or guide_anchors is None else (
          guide_anchors @ guide_cols.T)
      removed = common.removed_by_rules(terms, cosine, guide_scores, fn_threshold,
                                        guide_threshold)
      keep = is_candidate if removed is None else is_candidate & ~removed
      if removed is not None and name in terms.directions:
        masked += jnp.sum(is_candidate & removed)
        considered += jnp.sum(is_candidate)
      blocks.append(jnp.where(keep, scale * cosine, -jnp.inf))
    logits[name] = jnp.concatenate(blocks, axis=1)

  def cross_entropy(negative_logits):
    """-log softmax of the positive among [positive, negatives], per row."""
    with_positive = jnp.concatenate([positive[:, None], negative_logits], axis=1)
    return -jax.nn.log_softmax(with_positive, axis=1)[:, 0]

  used = [logits[d] for d in terms.directions]
  if terms.partition == "joint":
    row_losses = cross_entropy(jnp.concatenate(used, axis=1))
  else:
    row_losses = sum(cross_entropy(u) for u in used)
  loss = jnp.sum(row_losses) / terms.normaliser(batch)

  best = {d: jnp.max(logits[d], axis=1, initial=-jnp.inf) for d in ("x->y", "y->x")}
  sums = common.MetricSums(
      correct_x_to_y=jnp.sum(positive > best["x->y"], dtype=jnp.float32),
      correct_y_to_x=jnp.sum(positive > best["y->x"], dtype=jnp.float32),
      positive_cosine=jnp.sum(positive_cosine),
      negative_cosine=jnp.sum(jnp.where(is_negative, x @ y.T, 0.0)),
      negative_pairs=jnp.sum(is_negative, dtype=jnp.float32),
  )
  if terms.masking:
    sums["masked_pairs"] = masked.astype(jnp.float32)
    sums["candidate_pairs"] = considered.astype(jnp.float32)
  return loss, common.finalize_metrics(sums, batch, log_temp)
