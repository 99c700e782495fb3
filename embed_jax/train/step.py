"""The train step: a pure function (state, batch) -> (state, metrics), direct or GradCache.

Both paths compute the same thing: the symmetric InfoNCE over the WHOLE global
batch (every example is a negative of every other, across all devices), and
its gradient. The batch is split into `num_chunks` chunks; chunk c embeds with
dropout key fold_in(step_key, c) (then one key per side), so the dropout masks
do not depend on which path runs.

  direct (num_chunks = 1, or `direct_grads`): one forward over all chunks and
    one autodiff backward; activation memory grows with the global batch.
  GradCache (num_chunks > 1): (1) embed every chunk without keeping
    activations (a `lax.scan`); (2) the loss over all embeddings and its
    gradient with respect to them; (3) per chunk, re-run the forward under
    `jax.vjp` with the same dropout keys and pull that chunk's slice of
    embedding gradients back into accumulated parameter gradients. Activation
    memory is that of one chunk; the negatives stay the whole batch.

Chunks are cut inside each device's shard (chunk c holds rows c*m..(c+1)*m of
every shard), so chunking moves no data between devices.

Packed batches (`embed_jax.data.packed_batches`: several texts per row) give
the same loss and gradients: each (shard, chunk) group of texts is packed on
its own into Rg rows laid out shard-major then chunk, so `_chunk` cuts the row
arrays as it cuts the texts, and each chunk embeds its K*Rg rows and pools
per shard (`DualEncoder.embed_packed` with groups=K), without gathers across
devices. Only dropout differs: its masks are drawn over the packed rows, so
with dropout on a packed step is a different (equally valid) sample of masks
than the padded step's.

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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from embed_jax import partitioning
from embed_jax.data import packed_batches
from embed_jax.losses import contrastive_loss
from embed_jax.models.dual_encoder import DualEncoder
from embed_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]
_SIDE_KEYS = {"x": 0, "y": 1, "neg": 2}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StepConfig:
  """How the step computes loss and gradients.

  Attributes:
    grad_cache_chunks: chunks of the global batch (1 = the direct step). Each
      device's share of the batch must divide by it.
    loss_impl: `contrastive_loss` impl: "gather", "ring" or "reference".
    mask_duplicates: do not count pairs with the same y text as negatives
      (uses the batch's `y_ids`).
    dropout: train with the model's dropout rates (False: deterministic).
      With `pack` the dropout masks fall on packed rows, so they differ from
      the padded batch's (the loss and gradients are equal without dropout).
    pack: the trainer packs each host batch (`data.packed_batches.pack_batch`)
      before it becomes global, several texts per row; the step then compiles
      once per distinct packed shape. The step itself takes either layout.
  """
  grad_cache_chunks: int = 1
  loss_impl: str = "gather"
  mask_duplicates: bool = True
  dropout: bool = True
  pack: bool = False


class TrainStep:
  """Builds the loss/gradient functions and the jitted step for one model, optimizer and mesh.

  Args:
    module: the dual encoder.
    tx, schedule: the optimizer and its learning-rate schedule (for metrics).
    mesh, rules: where the batch and params live.
    params_shardings: the params' NamedShardings (gradient accumulators follow them).
    config: StepConfig.
  """

  def __init__(self, module: DualEncoder, tx: optax.GradientTransformation,
               schedule: optax.Schedule | None, mesh: Mesh,
               rules: partitioning.LogicalRules | None, params_shardings: Any,
               config: StepConfig = StepConfig()):
    if config.grad_cache_chunks < 1:
      raise ValueError(f"StepConfig.grad_cache_chunks must be >= 1, got {config.grad_cache_chunks}")
    self.module, self.tx, self.schedule = module, tx, schedule
    self.mesh, self.rules, self.config = mesh, rules, config
    self.params_shardings = params_shardings
    self.num_shards = partitioning.batch_size_multiple(mesh, rules)
    self.batch_axes = partitioning.batch_axes(mesh, rules) or None

  # ---- chunking (within each device's shard) ----

  def check_batch(self, batch: Mapping[str, Any]) -> None:
    """Raises unless the global batch (arrays or shapes) splits into shards and each shard into chunks.

    A packed batch's row arrays must split so too (`pack_batch` lays them out so).
    """
    n = self.config.grad_cache_chunks
    groups = self.num_shards * n
    packed = packed_batches.is_packed(batch)
    batch_size = batch["x_pool_index" if packed else "x_tokens"].shape[0]
    if batch_size % groups:
      raise ValueError(
          f"global batch {batch_size} must be a multiple of {self.num_shards} batch shards x "
          f"{n} grad_cache_chunks = {groups}")
    for key in (k for k in batch if packed and k.endswith("_packed_tokens")):
      if batch[key].shape[0] % groups:
        raise ValueError(f"{key} has {batch[key].shape[0]} rows, not a multiple of "
                         f"{groups} (batch shards x grad_cache_chunks): pack it with "
                         f"pack_batch(groups=shards on this process x {n})")

  def _chunk(self, a: jax.Array) -> jax.Array:
    """[B, ...] -> [N, B/N, ...]: chunk c = rows c*m..(c+1)*m of every shard (m = B/(K*N))."""
    k, n = self.num_shards, self.config.grad_cache_chunks
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

  # ---- the model and the loss ----

  def embed_chunk(self, params: Any, chunk: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Embeds one chunk: {"x": [b, d], "y": [b, d], "neg": [b, H, d] when the batch has negatives}.

    The chunk is padded (x_tokens, x_mask [b, Lx], ...) or packed (the
    `packed_batches` keys, K*Rg rows of each side, pool_index [b] / [b, H]);
    either way the b = K*m rows come out in the chunk's row order.
    """
    deterministic = not self.config.dropout
    packed = packed_batches.is_packed(chunk)

    def embed(key, side):
      rngs = {"dropout": jax.random.fold_in(rng, _SIDE_KEYS[key])}
      if packed:
        pool_index = chunk[f"{key}_pool_index"]
        out = self.module.apply(
            {"params": params}, chunk[f"{key}_packed_tokens"], chunk[f"{key}_segment_ids"],
            chunk[f"{key}_text_of_token"], pool_index.reshape(-1), groups=self.num_shards,
            deterministic=deterministic, rngs=rngs, method=DualEncoder.embed_packed)
        return out.reshape(*pool_index.shape, -1)
      tokens, mask = chunk[f"{key}_tokens"], chunk[f"{key}_mask"]
      out = self.module.apply(
          {"params": params}, tokens.reshape(-1, tokens.shape[-1]), mask.reshape(-1, mask.shape[-1]),
          side=side, deterministic=deterministic, rngs=rngs, method=DualEncoder.embed)
      return out.reshape(*tokens.shape[:-1], -1)
    out = {"x": embed("x", "x"), "y": embed("y", "y")}
    if f"neg_{'pool_index' if packed else 'tokens'}" in chunk:
      out["neg"] = embed("neg", "y")
    return out

  def log_temp(self, params: Any) -> jax.Array:
    return self.module.apply({"params": params}, method=DualEncoder.log_temperature)

  def loss(self, embeddings: Mapping[str, jax.Array], log_temp: jax.Array,
           batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The contrastive loss over the whole global batch of embeddings."""
    ids = batch.get("y_ids") if self.config.mask_duplicates else None
    return contrastive_loss(
        embeddings["x"], embeddings["y"], log_temp, mesh=self.mesh, impl=self.config.loss_impl,
        hard_negatives=embeddings.get("neg"), mask_duplicates=ids, rules=self.rules)

  def _inputs(self, batch: Batch) -> dict[str, jax.Array]:
    """The encoder's inputs of a padded or packed batch (each chunks along its leading dim)."""
    suffixes = ("_tokens", "_mask", "_segment_ids", "_text_of_token", "_pool_index")
    return {k: v for k, v in batch.items() if k.endswith(suffixes)}

  # ---- gradients ----

  def direct_grads(self, params: Any, batch: Batch, rng: jax.Array):
    """(loss, metrics, grads) by one autodiff pass over the whole batch (the oracle of GradCache)."""
    n = self.config.grad_cache_chunks
    chunks = {k: self._chunk(v) for k, v in self._inputs(batch).items()}

    def loss_fn(p):
      parts = [self.embed_chunk(p, {k: v[c] for k, v in chunks.items()}, jax.random.fold_in(rng, c))
               for c in range(n)]
      embeddings = {k: self._unchunk(jnp.stack([part[k] for part in parts])) for k in parts[0]}
      return self.loss(embeddings, self.log_temp(p), batch)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, metrics, grads

  def grad_cache_grads(self, params: Any, batch: Batch, rng: jax.Array):
    """(loss, metrics, grads) by GradCache's two passes; equal to `direct_grads`."""
    n = self.config.grad_cache_chunks
    chunks = {k: self._chunk(v) for k, v in self._inputs(batch).items()}
    index = jnp.arange(n)

    def forward(_, xs):
      c, chunk = xs
      return None, self.embed_chunk(params, chunk, jax.random.fold_in(rng, c))
    _, embedded = jax.lax.scan(forward, None, (index, chunks))
    embeddings = {k: self._unchunk(v) for k, v in embedded.items()}

    log_temp, log_temp_vjp = jax.vjp(self.log_temp, params)
    (loss, metrics), (d_embeddings, d_log_temp) = jax.value_and_grad(
        lambda e, t: self.loss(e, t, batch), argnums=(0, 1), has_aux=True)(embeddings, log_temp)
    d_chunks = {k: self._chunk(v) for k, v in d_embeddings.items()}

    def backward(acc, xs):
      c, chunk, d_chunk = xs
      _, vjp = jax.vjp(lambda p: self.embed_chunk(p, chunk, jax.random.fold_in(rng, c)), params)
      (grads,) = vjp(d_chunk)
      return jax.tree.map(jnp.add, acc, grads), None
    (init,) = log_temp_vjp(d_log_temp)
    init = jax.lax.with_sharding_constraint(init, self.params_shardings)
    grads, _ = jax.lax.scan(backward, init, (index, chunks, d_chunks))
    return loss, metrics, grads

  def grads(self, params: Any, batch: Batch, rng: jax.Array):
    if self.config.grad_cache_chunks == 1:
      return self.direct_grads(params, batch, rng)
    return self.grad_cache_grads(params, batch, rng)

  # ---- the step ----

  def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch; pure (jit it with `compile`)."""
    rng = jax.random.fold_in(state.rng, state.step)
    loss, loss_metrics, grads = self.grads(state.params, batch, rng)
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

  def jit(self, state_shardings: TrainState, batch_keys: Mapping[str, Any]) -> Callable:
    """The step jitted with in/out shardings and the state donated (lowered per batch shape).

    batch_keys: the batch's arrays or shapes (only keys and ranks matter).
    """
    batch_shardings = self.batch_shardings(batch_keys)
    return jax.jit(self, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, partitioning.replicated(self.mesh)),
                   donate_argnums=(0,))

  def batch_shardings(self, batch: Mapping[str, Any]) -> dict[str, NamedSharding]:
    """Each batch array sharded along its leading dim over the batch axes."""
    return {k: partitioning.batch_sharding(self.mesh, v.ndim, self.rules) for k, v in batch.items()}

  def lower_and_compile(self, jitted: Callable, abstract_state: TrainState,
                        abstract_batch: Mapping[str, jax.ShapeDtypeStruct]) -> Any:
    """`jitted` (from `jit`) compiled ahead of time for one batch shape."""
    self.check_batch(abstract_batch)
    shardings = self.batch_shardings(abstract_batch)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
             for k, v in abstract_batch.items()}
    with partitioning.activate(self.mesh, self.rules):
      return jitted.lower(abstract_state, batch).compile()

  def compile(self, state_shardings: TrainState, abstract_state: TrainState,
              abstract_batch: Mapping[str, jax.ShapeDtypeStruct]) -> Callable:
    """The step jitted with in/out shardings and the state donated, compiled ahead of time."""
    return self.lower_and_compile(self.jit(state_shardings, abstract_batch), abstract_state,
                                  abstract_batch)


class CompiledSteps:
  """The step jitted once and compiled ahead of time per distinct batch shape.

  Packed batches vary in rows from batch to batch (in few buckets); each new
  shape is compiled on first sight and kept. Call it as the compiled step:
  `state, metrics = steps(state, batch)`.
  """

  def __init__(self, step: TrainStep, state_shardings: TrainState, abstract_state: TrainState,
               batch_keys: Mapping[str, Any]):
    self.step, self.abstract_state = step, abstract_state
    self.jitted = step.jit(state_shardings, batch_keys)
    self.compiled: dict[tuple, Any] = {}

  @staticmethod
  def shape_key(batch: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))

  def compiled_for(self, batch: Mapping[str, Any]) -> Any:
    """The compiled step for `batch`'s shapes (compiling it the first time)."""
    key = self.shape_key(batch)
    if key not in self.compiled:
      abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
      self.compiled[key] = self.step.lower_and_compile(self.jitted, self.abstract_state, abstract)
    return self.compiled[key]

  def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    return self.compiled_for(batch)(state, batch)


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
