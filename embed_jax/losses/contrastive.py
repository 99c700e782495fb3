"""`contrastive_loss`: the symmetric in-batch InfoNCE of cpt-text, checked and dispatched."""

from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
import numpy as np

from embed_jax import partitioning
from embed_jax.losses import common
from embed_jax.losses.gather import gather_loss
from embed_jax.losses.reference import reference_loss
from embed_jax.losses.ring import ring_loss

IMPLS = ("reference", "gather", "ring")


@gin.configurable
def contrastive_loss(
    x: jax.Array,
    y: jax.Array,
    log_temp: jax.Array | float,
    *,
    mesh: jax.sharding.Mesh | None = None,
    impl: str = "gather",
    hard_negatives: jax.Array | None = None,
    mask_duplicates: jax.Array | None = None,
    tile_size: int = 1024,
    rules: partitioning.LogicalRules | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Symmetric InfoNCE over every in-batch pair: mean of the x->y and y->x cross-entropies.

  Logits are plain dot products times the logit scale, `exp(log_temp) * x @ y.T`;
  for L2-normalised inputs (the dual encoder normalises them) that is
  `cosine / temperature`. The loss does not clamp the scale; the model does.
  The positive of x row i is y column i, and every other y is a negative; the
  loss is the mean over 2B cross-entropies: B rows x_i -> {y_j}, B columns
  y_j -> {x_i}. Computed in float32 whatever the input dtype.

  Args:
    x, y: float [B, d], the two sides of B pairs.
    log_temp: float scalar; logit scale = exp(log_temp).
    mesh: the device mesh. Its batch axes (`partitioning.batch_axes(mesh, rules)`,
      by default ('data', 'fsdp')) shard B; other axes (e.g. 'tensor') replicate
      the loss. None: one device.
    impl: "gather" (default): all_gather the embeddings, each shard scores its
      rows against all B columns; memory ~ 2 x (B/K) x B logits per device.
      "ring": ppermute ring with a flash-style online log-sum-exp under a custom
      VJP, tiled inside each device; memory ~ a few x local embeddings + tile^2.
      "reference": plain dense computation on the global arrays (test oracle).
    hard_negatives: optional float [B, H, d], extra y-side embeddings. As in DPR
      and sentence-transformers' MultipleNegativesRankingLoss, all B*H of them are
      extra negative columns for every x row in the x->y direction; they add no
      rows to the y->x direction, and the loss stays the mean over 2B rows.
    mask_duplicates: optional int [B], an id of each y text. Pairs i != j with
      equal ids are not negatives of each other (masked out in both directions;
      hard negatives are never masked).
    tile_size: for "ring", the rows/columns of the largest logit tile held at once.
    rules: logical axis rules naming the batch axes (default `DEFAULT_RULES`).

  Returns:
    (loss, metrics): the scalar float32 loss and a dict of float32 scalars,
    the same for every impl and carrying no gradient:
      accuracy_x_to_y, accuracy_y_to_x: share of rows (columns) whose positive
        logit beats every candidate the loss ranks it against (a tie is a miss;
        x->y candidates include the hard negatives);
      logit_scale: exp(log_temp); temperature: 1 / exp(log_temp);
      positive_cosine: mean x_i . y_i;
      negative_cosine: mean x_i . y_j over in-batch pairs i != j not masked as
        duplicates (0 when there is none).

  Raises:
    ValueError: naming the argument, its shape and the expected shape, for
      mismatched shapes, a batch not divisible by the batch shards, an unknown impl.
  """
  axes = partitioning.batch_axes(mesh, rules) if mesh is not None else ()
  num_shards = partitioning.batch_size_multiple(mesh, rules) if mesh is not None else 1
  if num_shards == 1:
    axes = ()
  _check_inputs(x, y, log_temp, hard_negatives, mask_duplicates, impl, tile_size, num_shards, axes)

  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  log_temp = jnp.asarray(log_temp, jnp.float32).reshape(())
  hard = None
  if hard_negatives is not None and hard_negatives.shape[1] > 0:
    hard = jnp.asarray(hard_negatives, jnp.float32)
  ids = None if mask_duplicates is None else jnp.asarray(mask_duplicates, jnp.int32)

  if impl == "reference":
    return reference_loss(x, y, log_temp, hard, ids)
  inputs = dict(x=x, y=y)
  if hard is not None:
    inputs["hard"] = hard
  if ids is not None:
    inputs["ids"] = ids
  if impl == "gather":
    return gather_loss(inputs, log_temp, mesh=mesh, axes=axes)
  return ring_loss(inputs, log_temp, mesh=mesh, axes=axes, tile_size=int(tile_size))


def _check_inputs(x, y, log_temp, hard_negatives, mask_duplicates, impl, tile_size,
                  num_shards: int, axes: common.BatchAxes) -> None:
  """Raises ValueError naming what is wrong and what was expected."""
  where = "embed_jax.losses.contrastive_loss"
  if impl not in IMPLS:
    raise ValueError(f"{where}: unknown impl {impl!r}; expected one of {IMPLS}")
  if np.ndim(x) != 2 or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"{where}: x must be a float array [B, d], got {_describe(x)}")
  batch, dim = np.shape(x)
  if np.shape(y) != (batch, dim) or not jnp.issubdtype(jnp.result_type(y), jnp.floating):
    raise ValueError(
        f"{where}: y must be a float array [B, d] = {[batch, dim]} like x, got {_describe(y)}")
  if np.size(log_temp) != 1 or np.ndim(log_temp) > 1:
    raise ValueError(f"{where}: log_temp must be a scalar, got shape {np.shape(log_temp)}")
  if hard_negatives is not None and (
      np.ndim(hard_negatives) != 3 or np.shape(hard_negatives)[::2] != (batch, dim)):
    raise ValueError(
        f"{where}: hard_negatives must be [B, H, d] = [{batch}, H, {dim}], "
        f"got {_describe(hard_negatives)}")
  if mask_duplicates is not None and (
      np.shape(mask_duplicates) != (batch,)
      or not jnp.issubdtype(jnp.result_type(mask_duplicates), jnp.integer)):
    raise ValueError(
        f"{where}: mask_duplicates must be int ids [B] = [{batch}], got {_describe(mask_duplicates)}")
  if impl != "reference" and batch % num_shards:
    raise ValueError(
        f"{where}: batch size {batch} is not divisible by the {num_shards} shards of the "
        f"mesh's batch axes {axes}; expected a multiple of {num_shards}")
  if impl == "ring" and (not isinstance(tile_size, (int, np.integer)) or tile_size < 1):
    raise ValueError(f"{where}: tile_size must be a positive int, got {tile_size!r}")


def _describe(a) -> str:
  return f"shape {tuple(np.shape(a))} dtype {jnp.result_type(a)}"
