"""`contrastive_loss`: the in-batch InfoNCE of cpt-text and today's terms, checked and dispatched.

Not gin-configurable: the objective (`train.objective.ContrastiveObjective`) is
the one place a run's loss settings are bound, and it passes them here.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from embed_jax import partitioning
from embed_jax.errors import ConfigError
from embed_jax.losses import common, distill as distill_lib
from embed_jax.losses.gather import gather_loss
from embed_jax.losses.reference import reference_loss
from embed_jax.losses.ring import ring_loss

IMPLS = ("reference", "gather", "ring")
DEFAULT_DIRECTIONS = ("x->y", "y->x")
# Metrics also reported at the smallest Matryoshka dimension (suffix _dim{d}).
_PER_DIM_METRICS = ("accuracy_x_to_y", "accuracy_y_to_x", "positive_cosine", "negative_cosine")
_WHERE = "embed_jax.losses.contrastive_loss"


def contrastive_loss(
    x: jax.Array,
    y: jax.Array,
    log_temp: jax.Array | float,
    *,
    mesh: jax.sharding.Mesh | None = None,
    impl: str = "gather",
    hard_negatives: jax.Array | None = None,
    hard_negative_mask: jax.Array | None = None,
    mask_duplicates: jax.Array | None = None,
    tile_size: int = 1024,
    rules: partitioning.LogicalRules | None = None,
    matryoshka_dims: Sequence[int] | None = None,
    matryoshka_weights: Sequence[float] | None = None,
    directions: Sequence[str] = DEFAULT_DIRECTIONS,
    partition: str = "per_direction",
    guide: Sequence[jax.Array] | None = None,
    guide_margin: float = 0.0,
    guide_margin_kind: str = "absolute",
    false_negative_margin: float | None = None,
    teacher_scores: jax.Array | None = None,
    distill: str | None = None,
    distill_weight: float = 1.0,
    distill_temperature: float = 1.0,
    distill_student_temperature: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """In-batch InfoNCE over every pair of the global batch, with today's optional terms.

  Logits are plain dot products times the logit scale, `exp(log_temp) * x @ y.T`;
  for L2-normalised inputs (the dual encoder normalises them) that is
  `cosine / temperature`. The loss does not clamp the scale; the model does.
  The positive of x row i is y column i, and every other y is a negative. By
  default the loss is the mean over 2B cross-entropies: B rows x_i -> {y_j},
  B columns y_j -> {x_i}. Computed in float32 whatever the input dtype.

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
      "reference": plain dense computation on the global arrays.
    hard_negatives: optional float [B, H, d], extra y-side embeddings. As in DPR
      and sentence-transformers' MultipleNegativesRankingLoss, all B*H of them are
      extra negative columns for every x row in the x->y direction; they add no
      rows to the other directions.
    hard_negative_mask: optional bool [B, H]: False where a hard negative is
      missing (a placeholder); it is then no candidate anywhere.
    mask_duplicates: optional int [B], an id of each y text. Pairs i != j with
      equal ids are not negatives of each other in any direction (hard
      negatives are never masked by ids).
    tile_size: for "ring", the rows/columns of the largest logit tile held at once.
    rules: logical axis rules naming the batch axes (default `DEFAULT_RULES`).
    matryoshka_dims: increasing (d1, ..., dk), dk <= d: the loss is the
      weighted sum over k of the whole loss (every term below) on the first d_k
      dimensions of x, y and the hard negatives, each prefix re-normalised to
      unit length (sentence-transformers' MatryoshkaLoss). None: the inputs as
      they are.
    matryoshka_weights: one non-negative weight per dim (default 1 each).
    directions: which cross-entropies: "x->y", "y->x" (the default pair),
      "x->x" (x_i against x_j, j != i) and "y->y"; the positive of row i is
      always x_i . y_i, and duplicate ids mask every direction.
    partition: "per_direction" (default): one cross-entropy per direction and
      row, the loss their mean over directions and rows; "joint": one softmax
      per row i over the candidates of every direction (GTE's improved
      contrastive loss), the loss the mean over the B rows.
    guide: (gx, gy) float [B, dg], or (gx, gy, gh) with gh [B, H, dg]: a frozen
      guide model's normalised embeddings of the same texts, sharded like x.
      GISTEmbed: with g = gx @ gy.T, candidate j of x row i is removed when
      g[i, j] > g[i, i] - guide_margin ("absolute") or > guide_margin * g[i, i]
      ("relative"); candidate i of y row j when g[i, j] > g[j, j] - margin;
      "x->x" / "y->y" use gx @ gx.T / gy @ gy.T against the same threshold,
      hard negatives gx_i . gh (only with gh). The positive is never removed.
    guide_margin, guide_margin_kind: the rule's margin and kind.
    false_negative_margin: the same rule (same kind) on the model's own
      cosines, not differentiated: a candidate scoring above the row's positive
      cosine minus the margin is removed (NV-Retriever). None: off.
    teacher_scores: float [B, 1+H], a teacher's scores of each pair's positive
      and hard negatives; needs `distill`.
    distill: "kl" or "margin_mse": `distill.distill_loss` of the teacher
      scores, times `distill_weight`, added to the loss (in every Matryoshka
      prefix). distill_temperature divides the teacher's scores;
      distill_student_temperature divides the student's cosines (None: the
      student's logits, cosine * exp(log_temp)).

  Returns:
    (loss, metrics): the scalar float32 loss and a dict of float32 scalars,
    the same for every impl and carrying no gradient:
      accuracy_x_to_y, accuracy_y_to_x: share of rows (columns) whose positive
        logit beats every candidate left after masking (a tie is a miss;
        x->y candidates include the hard negatives);
      logit_scale: exp(log_temp); temperature: 1 / exp(log_temp);
      positive_cosine: mean x_i . y_i;
      negative_cosine: mean x_i . y_j over in-batch pairs i != j not masked as
        duplicates (0 when there is none);
      with a guide or false_negative_margin: masked_share, the share of the
        loss's candidates the rules removed;
      with Matryoshka: the above at the largest dim, loss_dim{d} for every
        dim, and accuracy/cosine metrics with suffix _dim{d} at the smallest;
      with distillation: distill_loss (at the largest dim, before the weight).

  Raises:
    ConfigError (a ValueError): naming the argument, its value or shape and
      what was expected.
  """
  axes = partitioning.batch_axes(mesh, rules) if mesh is not None else ()
  num_shards = partitioning.batch_size_multiple(mesh, rules) if mesh is not None else 1
  if num_shards == 1:
    axes = ()
  _check_inputs(x, y, log_temp, hard_negatives, mask_duplicates, impl, tile_size, num_shards, axes)
  dims, weights = check_options(
      dim=np.shape(x)[1], matryoshka_dims=matryoshka_dims, matryoshka_weights=matryoshka_weights,
      directions=directions, partition=partition, guide_margin=guide_margin,
      guide_margin_kind=guide_margin_kind, false_negative_margin=false_negative_margin,
      distill=distill, distill_weight=distill_weight, distill_temperature=distill_temperature,
      distill_student_temperature=distill_student_temperature)
  hard_count = 0 if hard_negatives is None else np.shape(hard_negatives)[1]
  _check_extras(x, hard_count, hard_negative_mask, guide, teacher_scores, distill)

  inputs = dict(x=jnp.asarray(x, jnp.float32), y=jnp.asarray(y, jnp.float32))
  log_temp = jnp.asarray(log_temp, jnp.float32).reshape(())
  if hard_count:
    inputs["hard"] = jnp.asarray(hard_negatives, jnp.float32)
    if hard_negative_mask is not None:
      inputs["valid"] = jnp.asarray(hard_negative_mask).astype(bool)
  if mask_duplicates is not None:
    inputs["ids"] = jnp.asarray(mask_duplicates, jnp.int32)
  if guide is not None:
    inputs["gx"] = jnp.asarray(guide[0], jnp.float32)
    inputs["gy"] = jnp.asarray(guide[1], jnp.float32)
    if len(guide) == 3 and hard_count:
      inputs["gh"] = jnp.asarray(guide[2], jnp.float32)
  terms = common.Terms(
      directions=tuple(directions), partition=partition, guide_margin=float(guide_margin),
      guide_margin_kind=guide_margin_kind,
      false_negative_margin=None if false_negative_margin is None else float(false_negative_margin),
      guided=guide is not None)

  def one_loss(part, prefix_dim):
    if impl == "ring":  # the ring takes its prefix inside the kernels (no copy outlives them)
      return ring_loss(part, log_temp, mesh=mesh, axes=axes, tile_size=int(tile_size),
                       terms=terms, prefix_dim=prefix_dim)
    if prefix_dim is not None:
      part = _prefixed(part, prefix_dim)
    if impl == "reference":
      return reference_loss(part, log_temp, terms)
    return gather_loss(part, log_temp, mesh=mesh, axes=axes, terms=terms)

  def with_distillation(prefix_dim=None):
    loss, metrics = one_loss(inputs, prefix_dim)
    if distill is not None:
      part = inputs if prefix_dim is None else _prefixed(inputs, prefix_dim)
      term = distill_lib.distill_loss(
          part["x"], part["y"], part.get("hard"), part.get("valid"), teacher_scores, log_temp,
          kind=distill, temperature=float(distill_temperature),
          student_temperature=distill_student_temperature)
      loss = loss + distill_weight * term
      metrics = dict(metrics, distill_loss=jax.lax.stop_gradient(term))
    return loss, metrics

  if dims is None:
    return with_distillation()
  total, metrics, smallest = 0.0, {}, None
  for d, w in zip(dims, weights):
    loss, prefix_metrics = with_distillation(d)
    total = total + w * loss
    metrics[f"loss_dim{d}"] = jax.lax.stop_gradient(loss)
    smallest = smallest or (d, prefix_metrics)
  metrics.update(prefix_metrics)  # the largest dim's
  metrics.update({f"{k}_dim{smallest[0]}": smallest[1][k] for k in _PER_DIM_METRICS})
  return total, metrics


def _prefixed(inputs: dict[str, jax.Array], dim: int) -> dict[str, jax.Array]:
  """x, y and the hard negatives cut to their first `dim` features, re-normalised."""
  return dict(inputs, **{k: _prefix(inputs[k], dim) for k in ("x", "y", "hard") if k in inputs})


def _prefix(a: jax.Array, dim: int) -> jax.Array:
  """The first `dim` features of each row, re-normalised to unit length."""
  a = a[..., :dim]
  return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def check_options(*, dim: int | None = None, matryoshka_dims=None, matryoshka_weights=None,
                  directions=DEFAULT_DIRECTIONS, partition="per_direction", guide_margin=0.0,
                  guide_margin_kind="absolute", false_negative_margin=None, distill=None,
                  distill_weight=1.0, distill_temperature=1.0, distill_student_temperature=None,
                  where: str = _WHERE):
  """Raises ConfigError for a setting that cannot work; returns (dims, weights) as tuples.

  `dim` is the embedding size the Matryoshka dims must fit (None: unchecked).
  `where` names the settings' owner in the message (e.g. "ContrastiveObjective").
  """
  dims = weights = None
  if matryoshka_dims is not None:
    dims = tuple(matryoshka_dims) if not isinstance(matryoshka_dims, int) else (matryoshka_dims,)
    if (not dims or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in dims)
        or any(a >= b for a, b in zip(dims, dims[1:]))):
      raise ConfigError(f"{where}.matryoshka_dims must be increasing positive ints, "
                        f"got {matryoshka_dims!r}")
    if dim is not None and dims[-1] > dim:
      raise ConfigError(f"{where}.matryoshka_dims {matryoshka_dims!r}: {dims[-1]} is larger than "
                        f"the embedding dimension {dim}; expected dims <= {dim}")
    weights = (1.0,) * len(dims) if matryoshka_weights is None else tuple(matryoshka_weights)
    if len(weights) != len(dims) or not all(
        isinstance(w, (int, float, np.number)) and w >= 0 for w in weights):
      raise ConfigError(f"{where}.matryoshka_weights must be {len(dims)} non-negative numbers "
                        f"(one per matryoshka_dims entry), got {matryoshka_weights!r}")
  elif matryoshka_weights is not None:
    raise ConfigError(f"{where}.matryoshka_weights={matryoshka_weights!r} needs matryoshka_dims")
  directions = (directions,) if isinstance(directions, str) else tuple(directions)
  unknown = [d for d in directions if d not in common.DIRECTIONS]
  if not directions or unknown or len(set(directions)) != len(directions):
    raise ConfigError(f"{where}.directions must be distinct entries of {common.DIRECTIONS}, "
                      f"got {directions!r}")
  if partition not in common.PARTITIONS:
    raise ConfigError(f"{where}.partition must be one of {common.PARTITIONS}, got {partition!r}")
  if guide_margin_kind not in common.MARGIN_KINDS:
    raise ConfigError(f"{where}.guide_margin_kind must be one of {common.MARGIN_KINDS}, "
                      f"got {guide_margin_kind!r}")
  for name, value in (("guide_margin", guide_margin),
                      ("false_negative_margin", false_negative_margin)):
    if value is not None and (not isinstance(value, (int, float, np.number)) or not np.isfinite(value)):
      raise ConfigError(f"{where}.{name} must be a finite number, got {value!r}")
  if distill is not None and distill not in distill_lib.DISTILL_KINDS:
    raise ConfigError(f"{where}.distill must be one of {distill_lib.DISTILL_KINDS} or None, "
                      f"got {distill!r}")
  if not isinstance(distill_weight, (int, float, np.number)) or not distill_weight >= 0:
    raise ConfigError(f"{where}.distill_weight must be a number >= 0, got {distill_weight!r}")
  for name, value in (("distill_temperature", distill_temperature),
                      ("distill_student_temperature", distill_student_temperature)):
    if value is not None and (not isinstance(value, (int, float, np.number)) or not value > 0):
      raise ConfigError(f"{where}.{name} must be a number > 0, got {value!r}")
  return dims, weights


def _concrete(a) -> bool:
  return not isinstance(a, jax.core.Tracer)


def _check_extras(x, hard_count: int, hard_negative_mask, guide, teacher_scores, distill) -> None:
  """The per-batch arrays of the optional terms: shapes, sharding, finite teacher scores."""
  batch = np.shape(x)[0]
  if hard_negative_mask is not None and np.shape(hard_negative_mask) != (batch, hard_count):
    raise ConfigError(f"{_WHERE}: hard_negative_mask must be [B, H] = [{batch}, {hard_count}] "
                      f"like hard_negatives, got {_describe(hard_negative_mask)}")
  if guide is not None:
    if len(guide) not in (2, 3):
      raise ConfigError(f"{_WHERE}: guide must be (gx, gy) or (gx, gy, g_hard_negatives), "
                        f"got {len(guide)} arrays")
    shape = np.shape(guide[0])
    for name, g in zip(("gx", "gy"), guide[:2]):
      if (np.ndim(g) != 2 or np.shape(g) != shape or np.shape(g)[0] != batch
          or not jnp.issubdtype(jnp.result_type(g), jnp.floating)):
        raise ConfigError(f"{_WHERE}: guide {name} must be a float array [B, dg] with B = {batch} "
                          f"(the batch of x) and gx, gy alike, got {_describe(g)}")
      _check_same_sharding(name, g, x)
    if len(guide) == 3 and hard_count and np.shape(guide[2]) != (batch, hard_count, shape[1]):
      raise ConfigError(f"{_WHERE}: the guide's hard-negative embeddings must be [B, H, dg] = "
                        f"[{batch}, {hard_count}, {shape[1]}], got {_describe(guide[2])}")
  if teacher_scores is not None:
    if distill is None:
      raise ConfigError(f"{_WHERE}: teacher_scores are given but distill is None; set distill to "
                        f"one of {distill_lib.DISTILL_KINDS}")
    if np.shape(teacher_scores) != (batch, 1 + hard_count):
      raise ConfigError(f"{_WHERE}: teacher_scores must be [B, 1+H] = [{batch}, {1 + hard_count}] "
                        f"(the positive and each hard negative), got {_describe(teacher_scores)}")
    if _concrete(teacher_scores) and not np.all(np.isfinite(np.asarray(teacher_scores))):
      raise ConfigError(f"{_WHERE}: teacher_scores hold NaN or infinite values; expected finite "
                        "scores (give a missing negative any finite score)")
  elif distill is not None:
    raise ConfigError(f"{_WHERE}: distill={distill!r} needs teacher_scores [B, 1+H] (a field of "
                      "the data)")


def _check_same_sharding(name: str, g, x) -> None:
  """Concrete guide embeddings must be sharded like x (traced ones are constrained by jit)."""
  if not (_concrete(g) and _concrete(x) and isinstance(g, jax.Array) and isinstance(x, jax.Array)):
    return
  gs, xs = g.sharding, x.sharding
  if (isinstance(gs, jax.sharding.NamedSharding) and isinstance(xs, jax.sharding.NamedSharding)
      and tuple(gs.spec)[:1] != tuple(xs.spec)[:1]):
    raise ConfigError(f"{_WHERE}: guide {name} is sharded {gs.spec} but x {xs.spec}; expected the "
                      "batch dimension sharded like x")


def _check_inputs(x, y, log_temp, hard_negatives, mask_duplicates, impl, tile_size,
                  num_shards: int, axes: common.BatchAxes) -> None:
  """Raises ConfigError naming what is wrong and what was expected."""
  where = _WHERE
  if impl not in IMPLS:
    raise ConfigError(f"{where}: unknown impl {impl!r}; expected one of {IMPLS}")
  if np.ndim(x) != 2 or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ConfigError(f"{where}: x must be a float array [B, d], got {_describe(x)}")
  batch, dim = np.shape(x)
  if np.shape(y) != (batch, dim) or not jnp.issubdtype(jnp.result_type(y), jnp.floating):
    raise ConfigError(
        f"{where}: y must be a float array [B, d] = {[batch, dim]} like x, got {_describe(y)}")
  if np.size(log_temp) != 1 or np.ndim(log_temp) > 1:
    raise ConfigError(f"{where}: log_temp must be a scalar, got shape {np.shape(log_temp)}")
  if hard_negatives is not None and (
      np.ndim(hard_negatives) != 3 or np.shape(hard_negatives)[::2] != (batch, dim)):
    raise ConfigError(
        f"{where}: hard_negatives must be [B, H, d] = [{batch}, H, {dim}], "
        f"got {_describe(hard_negatives)}")
  if mask_duplicates is not None and (
      np.shape(mask_duplicates) != (batch,)
      or not jnp.issubdtype(jnp.result_type(mask_duplicates), jnp.integer)):
    raise ConfigError(
        f"{where}: mask_duplicates must be int ids [B] = [{batch}], got {_describe(mask_duplicates)}")
  if impl != "reference" and batch % num_shards:
    raise ConfigError(
        f"{where}: batch size {batch} is not divisible by the {num_shards} shards of the "
        f"mesh's batch axes {axes}; expected a multiple of {num_shards}")
  if impl == "ring" and (not isinstance(tile_size, (int, np.integer)) or tile_size < 1):
    raise ConfigError(f"{where}: tile_size must be a positive int, got {tile_size!r}")


def _describe(a) -> str:
  return f"shape {tuple(np.shape(a))} dtype {jnp.result_type(a)}"
