"""The updater: gradients of any objective, directly or by GradCache, and the optimizer step.

Both gradient paths compute the same thing: the objective's loss over the
WHOLE global batch (every example a negative of every other, across all
devices) and its gradient. The batch is split into `grad_cache_chunks` chunks;
chunk c embeds with dropout key fold_in(step_key, c), so the dropout masks do
not depend on which path runs.

  direct (1 chunk, or `direct_grads`): one forward over all chunks and one
    autodiff backward; activation memory grows with the global batch.
  GradCache (more chunks): (1) embed every chunk without keeping activations
    (a `lax.scan`; the objective's forward-only targets, e.g. a guide model's
    embeddings, are computed here once); (2) the loss over all embeddings and
    its gradient with respect to them and to log_temp; (3) per chunk, re-run
    the forward under `jax.vjp` with the same dropout keys and pull that
    chunk's slice of embedding gradients back into accumulated parameter
    gradients. Activation memory is that of one chunk; the negatives stay the
    whole batch, and the cached embedding gradients carry every loss term.

Chunks are cut inside each device's shard (chunk c holds rows c*m..(c+1)*m of
every shard), so chunking moves no data between devices. Packed batches
(`data.packed_batches`) are laid out shard-major then chunk, so `_chunk` cuts
their row arrays as it cuts the texts; without dropout a packed step equals
the padded one (with dropout its masks fall on the packed rows).

A non-finite loss or gradient norm leaves params and optimizer state as they
were; the step still advances (the batch is consumed) and the skip is counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from embed_jax import partitioning
from embed_jax.data import packed_batches
from embed_jax.errors import ConfigError
from embed_jax.train.objective import Batch, ContrastiveObjective
from embed_jax.train.state import TrainState


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StepConfig:
  """How the step runs (what it computes is the objective's).

  Attributes:
    grad_cache_chunks: chunks of the global batch (1 = the direct step). Each
      device's share of the batch must divide by it.
    pack: the trainer packs each host batch (`data.packed_batches.pack_batch`)
      before it becomes global, several texts per row, so padding is not
      computed; the step compiles once per distinct packed shape. It equals
      the padded step without dropout; the step itself takes either layout.
  """
  grad_cache_chunks: int = 1
  pack: bool = True


class Updater:
  """Turns an objective into (loss, metrics, grads) and optimizer steps on one mesh.

  Args:
    objective: what to compute (`train.objective.ContrastiveObjective`).
    tx, schedule: the optimizer and its learning-rate schedule (for metrics);
      None when only gradients are wanted.
    params_shardings: the trained params' NamedShardings (gradient
      accumulators follow them); None when only direct gradients are wanted.
    grad_cache_chunks: 1 = direct; more = GradCache with that many chunks.
  """

  def __init__(self, objective: ContrastiveObjective, tx: optax.GradientTransformation | None,
               schedule: optax.Schedule | None, params_shardings: Any,
               grad_cache_chunks: int = 1):
    if grad_cache_chunks < 1:
      raise ConfigError(f"StepConfig.grad_cache_chunks must be >= 1, got {grad_cache_chunks}")
    self.objective, self.tx, self.schedule = objective, tx, schedule
    self.params_shardings = params_shardings
    self.grad_cache_chunks = grad_cache_chunks
    self.mesh, self.rules = objective.mesh, objective.rules
    self.num_shards = objective.num_shards
    self.batch_axes = partitioning.batch_axes(self.mesh, self.rules) or None

  # ---- chunking (within each device's shard) ----

  def check_batch(self, batch: Mapping[str, Any]) -> None:
    """Raises unless the global batch (arrays or shapes) splits into shards and each shard into chunks.

    A packed batch's row arrays must split so too (`pack_batch` lays them out so).
    """
    n = self.grad_cache_chunks
    groups = self.num_shards * n
    packed = packed_batches.is_packed(batch)
    batch_size = batch["x_pool_index" if packed else "x_tokens"].shape[0]
    if batch_size % groups:
      raise ConfigError(
          f"global batch {batch_size} must be a multiple of {self.num_shards} batch shards x "
          f"{n} grad_cache_chunks = {groups}")
    for key in (k for k in batch if packed and k.endswith("_packed_tokens")):
      if batch[key].shape[0] % groups:
        raise ValueError(f"{key} has {batch[key].shape[0]} rows, not a multiple of "
                         f"{groups} (batch shards x grad_cache_chunks): pack it with "
                         f"pack_batch(groups=shards on this process x {n})")

  def _chunk(self, a: jax.Array) -> jax.Array:
    """[B, ...] -> [N, B/N, ...]: chunk c = rows c*m..(c+1)*m of every shard (m = B/(K*N))."""
    k, n = self.num_shards, self.grad_cache_chunks
    m = a.shape[0] // (k * n)
    out = a.reshape(k, n, m, *a.shape[1:]).swapaxes(0, 1).reshape(n, k * m, *a.shape[1:])
    spec = PartitionSpec(None, self.batch_axes, *([None] * (a.ndim - 1)))
    return jax.lax.with_sharding_constraint(out, NamedSharding(self.mesh, spec))

  def _unchunk(self, a: jax.Array) -> jax.Array:
    """Inverse of `_chunk`: [N, B/N, ...] -> [B, ...] in the original row order."""
    k, n = self.num_shards, a.shape[0]
    m = a.shape[1] // k
    out = a.reshape(n, k, m, *a.shape[2:]).swapaxes(0, 1).reshape(k * n * m, *a.shape[2:])
    spec = PartitionSpec(self.batch_axes, *([None] * (a.ndim - 2)))
    return jax.lax.with_sharding_constraint(out, NamedSharding(self.mesh, spec))

  def _chunks(self, batch: Batch) -> dict[str, jax.Array]:
    return {k: self._chunk(v) for k, v in self.objective.inputs(batch).items()}

  # ---- gradients ----

  def direct_grads(self, params: Any, batch: Batch, rng: jax.Array, frozen: Any = None):
    """(loss, metrics, grads) by one autodiff pass over the whole batch (the oracle of GradCache)."""
    objective, n = self.objective, self.grad_cache_chunks
    chunks = self._chunks(batch)
    parts = [{k: v[c] for k, v in chunks.items()} for c in range(n)]
    targets = [objective.guide_embed(frozen, part) for part in parts]
    targets = {k: self._unchunk(jnp.stack([t[k] for t in targets])) for k in targets[0]}

    def loss_fn(p):
      embedded = [objective.embed(p, part, jax.random.fold_in(rng, c), frozen)
                  for c, part in enumerate(parts)]
      embeddings = {k: self._unchunk(jnp.stack([e[k] for e in embedded])) for k in embedded[0]}
      return objective.loss({**embeddings, **targets}, objective.log_temp(p, frozen), batch)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, metrics, grads

  def grad_cache_grads(self, params: Any, batch: Batch, rng: jax.Array, frozen: Any = None):
    """(loss, metrics, grads) by GradCache's two passes; equal to `direct_grads`."""
    objective = self.objective
    chunks = self._chunks(batch)
    index = jnp.arange(self.grad_cache_chunks)

    def forward(_, xs):
      c, part = xs
      embedded = objective.embed(params, part, jax.random.fold_in(rng, c), frozen)
      return None, (embedded, objective.guide_embed(frozen, part))
    _, (embedded, targets) = jax.lax.scan(forward, None, (index, chunks))
    embeddings = {k: self._unchunk(v) for k, v in embedded.items()}
    targets = {k: self._unchunk(v) for k, v in targets.items()}

    log_temp, log_temp_vjp = jax.vjp(lambda p: objective.log_temp(p, frozen), params)
    (loss, metrics), (d_embeddings, d_log_temp) = jax.value_and_grad(
        lambda e, t: objective.loss({**e, **targets}, t, batch), argnums=(0, 1),
        has_aux=True)(embeddings, log_temp)
    d_chunks = {k: self._chunk(v) for k, v in d_embeddings.items()}

    def backward(acc, xs):
      c, part, d_part = xs
      _, vjp = jax.vjp(lambda p: objective.embed(p, part, jax.random.fold_in(rng, c), frozen),
                       params)
      (grads,) = vjp(d_part)
      return jax.tree.map(jnp.add, acc, grads), None
    (init,) = log_temp_vjp(d_log_temp)
    init = jax.lax.with_sharding_constraint(init, self.params_shardings)
    grads, _ = jax.lax.scan(backward, init, (index, chunks, d_chunks))
    return loss, metrics, grads

  def grads(self, params: Any, batch: Batch, rng: jax.Array, frozen: Any = None):
    if self.grad_cache_chunks == 1:
      return self.direct_grads(params, batch, rng, frozen)
    return self.grad_cache_grads(params, batch, rng, frozen)

  # ---- the step ----

  def __call__(self, state: TrainState, batch: Batch, frozen: Any = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch; pure (jit it with `jit`/`compile`)."""
    rng = jax.random.fold_in(state.rng, state.step)
    loss, loss_metrics, grads = self.grads(state.params, batch, rng, frozen)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    def keep_if_finite(new, old):
      return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    skipped = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1,
        params=keep_if_finite(params, state.params),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        nonfinite_total=state.nonfinite_total + skipped,
        nonfinite_consecutive=jnp.where(finite, 0, state.nonfinite_consecutive + 1))
    metrics = {
        "loss": loss,
        "accuracy": 0.5 * (loss_metrics["accuracy_x_to_y"] + loss_metrics["accuracy_y_to_x"]),
        "grad_norm": grad_norm,
        "skipped": skipped,
        "nonfinite_total": new_state.nonfinite_total,
        "nonfinite_consecutive": new_state.nonfinite_consecutive,
        **loss_metrics,
    }
    if self.schedule is not None:
      metrics["learning_rate"] = jnp.asarray(self.schedule(state.step), jnp.float32)
    return new_state, metrics

  def batch_shardings(self, batch: Mapping[str, Any]) -> dict[str, NamedSharding]:
    """Each batch array sharded along its leading dim over the batch axes."""
    return {k: partitioning.batch_sharding(self.mesh, v.ndim, self.rules) for k, v in batch.items()}

  def jit(self, state_shardings: TrainState, batch_keys: Mapping[str, Any],
          frozen_shardings: Any = None) -> Callable:
    """The step jitted with in/out shardings and the state donated (lowered per batch shape).

    batch_keys: the batch's arrays or shapes (only keys and ranks matter).
    frozen_shardings: the shardings of the `frozen` argument (None without one).
    """
    return jax.jit(self, in_shardings=(state_shardings, self.batch_shardings(batch_keys),
                                       frozen_shardings),
                   out_shardings=(state_shardings, partitioning.replicated(self.mesh)),
                   donate_argnums=(0,))

  def lower_and_compile(self, jitted: Callable, abstract_state: TrainState,
                        abstract_batch: Mapping[str, jax.ShapeDtypeStruct],
                        abstract_frozen: Any = None) -> Any:
    """`jitted` (from `jit`) compiled ahead of time for one batch shape."""
    self.check_batch(abstract_batch)
    shardings = self.batch_shardings(abstract_batch)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
             for k, v in abstract_batch.items()}
    with partitioning.activate(self.mesh, self.rules):
      return jitted.lower(abstract_state, batch, abstract_frozen).compile()


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a tree of arrays; None stays None."""
  if tree is None:
    return None
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


class CompiledSteps:
  """The step jitted once and compiled ahead of time per distinct batch shape.

  Packed batches vary in rows from batch to batch (in few buckets); each new
  shape is compiled on first sight and kept. Call it as the compiled step:
  `state, metrics = steps(state, batch)`; `frozen` (params read but not
  trained) is bound once.
  """

  def __init__(self, updater: Updater, state_shardings: TrainState, abstract_state: TrainState,
               batch_keys: Mapping[str, Any], frozen: Any = None):
    self.updater, self.abstract_state, self.frozen = updater, abstract_state, frozen
    frozen_shardings = None if frozen is None else jax.tree.map(lambda a: a.sharding, frozen)
    self.jitted = updater.jit(state_shardings, batch_keys, frozen_shardings)
    self.compiled: dict[tuple, Any] = {}

  @staticmethod
  def shape_key(batch: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))

  def compiled_for(self, batch: Mapping[str, Any]) -> Any:
    """The compiled step for `batch`'s shapes (compiling it the first time)."""
    key = self.shape_key(batch)
    if key not in self.compiled:
      abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
      self.compiled[key] = self.updater.lower_and_compile(
          self.jitted, self.abstract_state, abstract, _abstract(self.frozen))
    return self.compiled[key]

  def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    return self.compiled_for(batch)(state, batch, self.frozen)


def describe_compiled(compiled: Any, pairs_per_step: int, num_devices: int) -> str:
  """Lines naming the compiled step's memory per device and its FLOPs per step (from XLA).

  XLA's cost analysis counts the partitioned program of one device; the step's
  total is that times `num_devices` (replicated work, e.g. the loss on the
  'tensor' axis, is counted on each device).
  """
  lines = []
  memory = compiled.memory_analysis()
  if memory is not None:
    gib = 1 / 2**30
    lines.append(
        "compiled train step memory per device: "
        f"arguments {memory.argument_size_in_bytes * gib:.3f} GiB, "
        f"outputs {memory.output_size_in_bytes * gib:.3f} GiB, "
        f"aliased {memory.alias_size_in_bytes * gib:.3f} GiB, "
        f"temporaries {memory.temp_size_in_bytes * gib:.3f} GiB, "
        f"code {memory.generated_code_size_in_bytes * gib:.3f} GiB")
  flops = compiled_flops(compiled) * num_devices
  if flops:
    lines.append(f"FLOPs per step (XLA cost analysis x {num_devices} devices): {flops:.4g} "
                 f"({flops / max(pairs_per_step, 1):.4g} per pair)")
  return "\n".join(lines)


def compiled_flops(compiled: Any) -> float:
  """FLOPs of one call of `compiled` per XLA's cost analysis (0 when unavailable)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
    return 0.0
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))
