"""Pieces every contrastive-loss implementation shares: the negative-pair mask and the metrics.

Each implementation reduces its (local) pairs to the same five sums, `MetricSums`;
`finalize_metrics` turns the global sums into the reported scalars, so the three
implementations report identical metrics by construction of the definitions below.
"""

from __future__ import annotations

import dataclasses
from typing import TypedDict

import jax
import jax.numpy as jnp


class MetricSums(TypedDict):
  """Sums over the pairs one shard (or the whole batch) scored; psummed across shards.

  correct_x_to_y: rows x_i whose positive logit beats every other candidate (in-batch
    columns not masked, and the hard negatives).
  correct_y_to_x: the same for y_j over the x side.
  positive_cosine: sum of x_i . y_i.
  negative_cosine: sum of x_i . y_j over in-batch negative pairs (i != j, not duplicates).
  negative_pairs: how many such pairs (float32, as it can exceed int32 at large B).
  masked_pairs, candidate_pairs: only with guided or margin masking: how many
    candidates of the loss's directions (in-batch negatives and valid hard
    negatives) the guide or margin rule removed, out of how many.
  """
  correct_x_to_y: jax.Array
  correct_y_to_x: jax.Array
  positive_cosine: jax.Array
  negative_cosine: jax.Array
  negative_pairs: jax.Array


DIRECTIONS = ("x->y", "y->x", "x->x", "y->y")
PARTITIONS = ("joint", "per_direction")
MARGIN_KINDS = ("absolute", "relative")


@dataclasses.dataclass(frozen=True)
class Terms:
  """The static options of the loss every impl computes (see `contrastive_loss`).

  directions: which cross-entropies: "x->y" (x_i against every y and hard
    negative), "y->x" (y_j against every x), "x->x" / "y->y" (against the same
    side, i != j); the positive of row i is always x_i . y_i.
  partition: "per_direction": each direction's rows are their own
    cross-entropy, the loss is the mean over directions and rows; "joint":
    row i's candidates of every direction share one softmax, mean over rows.
  guide_margin, guide_margin_kind: the guide rule (with a guide).
  false_negative_margin: the same rule on the model's own cosines; None: off.
  guided: whether guide embeddings are given.
  """
  directions: tuple[str, ...] = ("x->y", "y->x")
  partition: str = "per_direction"
  guide_margin: float = 0.0
  guide_margin_kind: str = "absolute"
  false_negative_margin: float | None = None
  guided: bool = False

  @property
  def masking(self) -> bool:
    return self.guided or self.false_negative_margin is not None

  def uses(self, direction: str) -> bool:
    return direction in self.directions

  def normaliser(self, batch: int) -> int:
    """The loss is the sum of the row losses divided by this."""
    return batch if self.partition == "joint" else len(self.directions) * batch

  def threshold(self, positive: jax.Array, margin: float) -> jax.Array:
    """Scores above this are false negatives of a row whose positive scores `positive`."""
    if self.guide_margin_kind == "relative":
      return margin * positive
    return positive - margin


def removed_by_rules(terms: Terms, cosine, guide_scores, fn_threshold, guide_threshold,
                     axis: int = 1) -> jax.Array | None:
  """bool: candidates the guide rule or the false-negative rule removes (None: no rule on).

  `cosine` / `guide_scores` [r, c] are the model's and the guide's scores; the
  thresholds [r] (axis=1, per row) or [c] (axis=0, per column) come from
  `Terms.threshold` of each anchor's positive. guide_scores None: no guide here.
  """
  expand = (lambda a: a[:, None]) if axis == 1 else (lambda a: a[None, :])
  removed = None
  if guide_scores is not None:
    removed = guide_scores > expand(guide_threshold)
  if terms.false_negative_margin is not None:
    by_margin = jax.lax.stop_gradient(cosine) > expand(fn_threshold)
    removed = by_margin if removed is None else removed | by_margin
  return removed


def negative_pair_mask(
    row_index: jax.Array,
    col_index: jax.Array,
    row_ids: jax.Array | None,
    col_ids: jax.Array | None,
) -> jax.Array:
  """Which (row, column) pairs of the batch count as negatives of each other.

  A pair is excluded when it is the positive pair (same global batch index) or,
  with duplicate ids given, when both sides carry the same y-text id.

  Args:
    row_index: int [r], global batch index of each row.
    col_index: int [c], global batch index of each column.
    row_ids, col_ids: int [r] and [c] y-text ids, or both None.

  Returns:
    bool [r, c], True where the pair is an in-batch negative.
  """
  excluded = row_index[:, None] == col_index[None, :]
  if row_ids is not None:
    excluded = excluded | (row_ids[:, None] == col_ids[None, :])
  return ~excluded


def finalize_metrics(sums: MetricSums, batch_size: int, log_temp: jax.Array) -> dict[str, jax.Array]:
  """Turns global metric sums into the reported scalars (all float32, no gradient).

  A tie between the positive and the best negative counts as a miss. With no
  negative pair at all (B = 1, or every pair a duplicate) `negative_cosine` is 0.
  """
  sums = jax.lax.stop_gradient(sums)
  scale = jnp.exp(jax.lax.stop_gradient(log_temp)).astype(jnp.float32)
  extra = {}
  if "masked_pairs" in sums:
    extra["masked_share"] = sums["masked_pairs"] / jnp.maximum(sums["candidate_pairs"], 1.0)
  return {**extra,
      "accuracy_x_to_y": sums["correct_x_to_y"] / batch_size,
      "accuracy_y_to_x": sums["correct_y_to_x"] / batch_size,
      "logit_scale": scale,
      "temperature": 1.0 / scale,
      "positive_cosine": sums["positive_cosine"] / batch_size,
      "negative_cosine": sums["negative_cosine"] / jnp.maximum(sums["negative_pairs"], 1.0),
  }


# Batch axes are a tuple of mesh axis names, or () when the computation runs on
# one device (mesh=None); these helpers let one kernel serve both cases.
BatchAxes = tuple[str, ...]


def shard_over_batch(kernel, mesh: jax.sharding.Mesh | None, axes: BatchAxes, in_specs, out_specs):
  """`kernel` under `jax.shard_map` over the batch axes of `mesh`, or as is without them.

  Mesh axes outside `axes` (e.g. 'tensor') are not named in the specs, so every
  device along them holds and computes the same thing.
  """
  if not axes:
    return kernel
  return jax.shard_map(kernel, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


def shard_index(axes: BatchAxes) -> jax.Array | int:
  """This shard's position along the (flattened) batch axes."""
  return jax.lax.axis_index(axes) if axes else 0


def psum(tree, axes: BatchAxes):
  """Sums a tree over the batch axes (identity on one device)."""
  return jax.lax.psum(tree, axes) if axes else tree


def varying(tree, axes: BatchAxes):
  """Marks freshly made arrays (`jnp.zeros`, not `zeros_like` of sharded data) as varying.

  Loop carries that later meet sharded data or a ppermute must carry that type
  from the start, or `shard_map` rejects the loop.
  """
  if not axes:
    return tree
  return jax.tree.map(lambda a: jax.lax.pcast(a, axes, to="varying"), tree)
