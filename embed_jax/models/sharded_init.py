"""Parameters created where they live: `init` jitted with sharded outputs.

The abstract (shape-only) init gives every param's logical axis names; the
rules map them to mesh axes; jitting `init` with those `out_shardings` makes
each device build only its own shards, so a model larger than one device's
memory can be initialised.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from embed_jax import partitioning
from embed_jax.models.dual_encoder import DualEncoder, DualEncoderConfig, build_dual_encoder

EXAMPLE_LENGTH = 8


def example_inputs(module: nn.Module, batch_size: int, length: int = EXAMPLE_LENGTH) -> tuple:
  """Dummy positional inputs for `module.init`: (tokens, mask) or, for a DualEncoder, both sides.

  Param shapes do not depend on the length; it is capped at the encoder's max_length.
  """
  config = module.config.encoder if isinstance(module, DualEncoder) else module.config
  length = min(length, config.max_length)
  tokens = jnp.zeros((batch_size, length), jnp.int32)
  mask = jnp.ones((batch_size, length), jnp.int32)
  if isinstance(module, DualEncoder):
    return tokens, mask, tokens, mask
  return tokens, mask


def abstract_params(module: nn.Module, example: tuple, mesh: Mesh | None = None,
                    rules: partitioning.LogicalRules | None = None) -> Any:
  """Shapes of the `params` collection, still boxed with logical names (no computation)."""
  def init(rng):
    return module.init(rng, *example)["params"]
  if mesh is None:
    return jax.eval_shape(init, jax.random.key(0))
  with partitioning.activate(mesh, rules):
    return jax.eval_shape(init, jax.random.key(0))


def param_shardings(module: nn.Module, mesh: Mesh,
                    rules: partitioning.LogicalRules | None = None) -> Any:
  """Tree of `NamedSharding` for the module's params on `mesh` (unboxed layout)."""
  example = example_inputs(module, partitioning.batch_size_multiple(mesh, rules))
  return partitioning.logical_to_shardings(abstract_params(module, example, mesh, rules), mesh, rules)


def init_params(module: nn.Module, rng: jax.Array, mesh: Mesh | None = None,
                rules: partitioning.LogicalRules | None = None) -> Any:
  """Initialises the module's params, unboxed; sharded on `mesh` when given.

  Without a mesh the params are created on the default device.
  """
  if mesh is None:
    example = example_inputs(module, 1)
    return jax.jit(lambda r: nn.meta.unbox(module.init(r, *example)["params"]))(rng)
  example = example_inputs(module, partitioning.batch_size_multiple(mesh, rules))
  shardings = partitioning.logical_to_shardings(
      abstract_params(module, example, mesh, rules), mesh, rules)

  def init(r):
    return nn.meta.unbox(module.init(r, *example)["params"])
  with partitioning.activate(mesh, rules):
    return jax.jit(init, out_shardings=shardings)(rng)


def init_dual_encoder(config: DualEncoderConfig, rng: jax.Array, mesh: Mesh | None = None,
                      rules: partitioning.LogicalRules | None = None) -> tuple[DualEncoder, Any]:
  """(module, params) for `config`, the params sharded on `mesh` when given."""
  module = build_dual_encoder(config)
  return module, init_params(module, rng, mesh, rules)
