"""The stack of Transformer blocks: unrolled or scanned, optionally rematerialised.

Unrolled (default), block i's params live under `layer_{i}`. Scanned
(`scan_layers=True`), one block is traced once and `nn.scan` runs it
num_layers times over params stacked under `layers` with a leading
[num_layers] axis (logical name "layers", unsharded by the default rules):
compile time stays flat in depth, which matters for 48- or 96-layer models.
`stack_layer_params` / `unstack_layer_params` convert between the two layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from embed_jax.errors import ConfigError
from embed_jax.models.layers import check_choice

# Checkpoint policies for `nn.remat` by name; "none" means no rematerialisation.
REMAT_POLICIES: dict[str, Callable[..., bool]] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
REMAT_CHOICES = (*REMAT_POLICIES, "none")
SCANNED_NAME = "layers"

# Block call signature: (self, x, key_mask, positions, segment_ids, deterministic).
_DETERMINISTIC_ARGNUM = 5


def maybe_remat(block_cls: type[nn.Module], policy: str, *, prevent_cse: bool = True):
  """`block_cls` wrapped in `nn.remat` with the named checkpoint policy ("none": unwrapped)."""
  check_choice("remat policy", policy, REMAT_CHOICES)
  if policy == "none":
    return block_cls
  return nn.remat(block_cls, policy=REMAT_POLICIES[policy], prevent_cse=prevent_cse,
                  static_argnums=(_DETERMINISTIC_ARGNUM,))


def run_blocks(block_cls: type[nn.Module], config: Any, x: jax.Array, key_mask: jax.Array,
               positions: jax.Array, segment_ids: jax.Array | None,
               deterministic: bool, collect: tuple[int, ...] | None = None
               ) -> jax.Array | tuple[jax.Array, ...]:
  """Applies `config.num_layers` blocks to x [B, L, D] (call inside a compact method).

  Each block is `block_cls(config)` called as (x, key_mask, positions,
  segment_ids, deterministic) and returns (x, None), the (carry, output) pair
  `nn.scan` expects. `config.remat_policy` and `config.scan_layers` choose
  rematerialisation and scanning.

  collect: block counts n (1..num_layers); then returns the hidden states
    after each's first n blocks (in that order), running only max(collect)
    blocks. Scanned stacks run all their blocks, so only (num_layers,) works.
  """
  if collect is not None:
    collect = tuple(int(n) for n in collect)
    bad = [n for n in collect if not 1 <= n <= config.num_layers]
    if bad or not collect:
      raise ConfigError(f"layer counts {list(collect)} must lie in 1..{config.num_layers} "
                        f"(the encoder's num_layers)")
    if config.scan_layers and set(collect) != {config.num_layers}:
      raise ConfigError(
          f"outputs of earlier layers ({list(collect)}) need unscanned layers: set "
          f"{type(config).__name__}.scan_layers = False")
  if config.scan_layers:
    block = maybe_remat(block_cls, config.remat_policy, prevent_cse=False)
    scanned = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=config.num_layers,
        metadata_params={nn.PARTITION_NAME: SCANNED_NAME},
    )
    x, _ = scanned(config, name=SCANNED_NAME)(x, key_mask, positions, segment_ids, deterministic)
    return x if collect is None else tuple(x for _ in collect)
  block = maybe_remat(block_cls, config.remat_policy)
  outputs = {}
  for i in range(config.num_layers if collect is None else max(collect)):
    x, _ = block(config, name=f"layer_{i}")(x, key_mask, positions, segment_ids, deterministic)
    outputs[i + 1] = x
  return x if collect is None else tuple(outputs[n] for n in collect)


def stack_layer_params(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """Unrolled params (layer_0 ... layer_{n-1}) -> scanned params (`layers`, stacked on axis 0)."""
  per_layer = [params[f"layer_{i}"] for i in range(num_layers)]
  rest = {k: v for k, v in params.items() if not k.startswith("layer_")}
  return {**rest, SCANNED_NAME: jax.tree.map(lambda *xs: np.stack(xs), *per_layer)}


def unstack_layer_params(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """Scanned params (`layers`) -> unrolled params (layer_0 ... layer_{n-1})."""
  rest = {k: v for k, v in params.items() if k != SCANNED_NAME}
  for i in range(num_layers):
    rest[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], params[SCANNED_NAME])
  return rest
