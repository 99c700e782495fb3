"""TrainState: everything a step reads and writes, and where each part lives on the mesh."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from embed_jax import partitioning


@flax.struct.dataclass
class TrainState:
  """The state of a run (a pytree of arrays; checkpointed whole).

  Attributes:
    step: int32 [], batches consumed so far (skipped ones included).
    params: the model's params tree.
    opt_state: the optax state.
    rng: uint32 [2], the run's base key; step s uses fold_in(rng, s).
    nonfinite_total: int32 [], updates skipped for a non-finite loss or gradient.
    nonfinite_consecutive: int32 [], such skips in a row up to this step.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_total: jax.Array
  nonfinite_consecutive: jax.Array


def create_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """A fresh state at step 0 (call under jit with `state_shardings` as out_shardings)."""
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=tx.init(params), rng=rng,
                    nonfinite_total=zero, nonfinite_consecutive=zero)


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params: Any,
                        params_shardings: Any, mesh: Mesh) -> Any:
  """Shardings of `tx`'s state: params-shaped subtrees (moments) like the params, the rest replicated."""
  params_def = jax.tree.structure(abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)

  def is_params_like(node) -> bool:
    return jax.tree.structure(node) == params_def

  def sharding(node):
    if is_params_like(node):
      return params_shardings
    return partitioning.replicated(mesh)
  return jax.tree.map(sharding, abstract_opt, is_leaf=is_params_like)


def state_shardings(tx: optax.GradientTransformation, abstract_params: Any,
                    params_shardings: Any, mesh: Mesh) -> TrainState:
  """A TrainState of NamedShardings: params by their logical axes, scalars replicated."""
  rep = partitioning.replicated(mesh)
  return TrainState(step=rep, params=params_shardings,
                    opt_state=opt_state_shardings(tx, abstract_params, params_shardings, mesh),
                    rng=rep, nonfinite_total=rep, nonfinite_consecutive=rep)


def abstract_state(tx: optax.GradientTransformation, abstract_params: Any,
                   shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs (with shardings) of the state: the restore target of a checkpoint."""
  shapes = jax.eval_shape(
      lambda p: create_state(p, tx, jax.random.PRNGKey(0)), abstract_params)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def init_state(params: Any, tx: optax.GradientTransformation, seed: int,
               shardings: TrainState) -> TrainState:
  """The step-0 state from (sharded) params, built in place by a jit with sharded outputs."""
  rng = jax.random.PRNGKey(seed)
  return jax.jit(lambda p, r: create_state(p, tx, r), out_shardings=shardings)(params, rng)
