"""LoRA: low-rank adapters on the encoder's projection kernels, and their merge.

A target kernel W (our layout: input axes, then output axes, e.g. a query
kernel [embed, heads, head_dim] or an attention output [heads, head_dim,
embed]; scanned layers add a leading [layers] axis) gets two trained factors

    lora_a [*in_axes, r]    lora_b [r, *out_axes]

and the adapted kernel is W + (alpha / r) * lora_a @ lora_b (contracting r).
lora_a starts as PEFT's (uniform in +-1/sqrt(fan_in)), lora_b at zero, so the
adapted model starts as the base. lora_a is named like W's input axes and
lora_b like its output axes (the rank axis unsharded), so each factor is
sharded as the base matrix it adapts.

Targets are matched against the kernels' module paths inside the encoder
(e.g. `layer_3/attention/query`): a target matches a path whose components
contain it as a contiguous run, so "attention/query" matches every layer's
query, "query" too, "attention" all four attention projections and
"layer_0/mlp" only the first layer's MLP. PEFT's names (q_proj, k_proj,
v_proj, o_proj, gate_proj, up_proj, down_proj) are accepted as aliases.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from embed_jax.errors import ConfigError

DEFAULT_TARGETS = ("attention/query", "attention/key", "attention/value", "attention/out")
MLP_TARGETS = ("mlp/wi", "mlp/wi_gate", "mlp/wi_up", "mlp/wo")
ALIASES = {"q_proj": "attention/query", "k_proj": "attention/key", "v_proj": "attention/value",
           "o_proj": "attention/out", "gate_proj": "mlp/wi_gate", "up_proj": "mlp/wi_up",
           "down_proj": "mlp/wo"}
A_NAME, B_NAME = "lora_a", "lora_b"
SCANNED_AXIS = "layers"
_PROJECTION_AXIS = "embed"


class LoraError(ConfigError):
  """A LoRA setting that cannot apply to the model (rank, targets)."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank r, alpha (the update is scaled by alpha / r) and the target patterns."""
  rank: int
  alpha: float = 16.0
  targets: tuple[str, ...] = DEFAULT_TARGETS

  def __post_init__(self):
    if isinstance(self.targets, str):
      object.__setattr__(self, "targets", (self.targets,))
    object.__setattr__(self, "targets", tuple(self.targets))
    if not isinstance(self.rank, int) or self.rank < 1:
      raise LoraError(f"train.lora_rank must be a positive integer (0 turns LoRA off), got "
                      f"{self.rank!r}")
    if not self.targets:
      raise LoraError("train.lora_targets is empty; name at least one projection, e.g. "
                      f"{list(DEFAULT_TARGETS)}")

  @property
  def scale(self) -> float:
    return float(self.alpha) / self.rank

  def record(self) -> dict[str, Any]:
    """JSON-able {rank, alpha, targets}: what a checkpoint and a model directory record."""
    return {"rank": self.rank, "alpha": float(self.alpha), "targets": list(self.targets)}


@dataclasses.dataclass(frozen=True)
class Target:
  """One adapted kernel: its path in the encoder's params, shape, axis names and split.

  lead: leading stacked axes (1 for scanned layers, else 0); num_in: input axes after them.
  """
  path: tuple[str, ...]
  shape: tuple[int, ...]
  names: tuple[str | None, ...]
  lead: int
  num_in: int

  @property
  def module_path(self) -> str:
    return "/".join(self.path[:-1])

  @property
  def in_size(self) -> int:
    return math.prod(self.shape[self.lead:self.lead + self.num_in])

  @property
  def out_size(self) -> int:
    return math.prod(self.shape[self.lead + self.num_in:])

  def factor_shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    lead, k = self.shape[:self.lead], self.lead + self.num_in
    return (*self.shape[:k], rank), (*lead, rank, *self.shape[k:])

  def factor_names(self) -> tuple[tuple, tuple]:
    k = self.lead + self.num_in
    return (*self.names[:k], None), (*self.names[:self.lead], None, *self.names[k:])


def _expand(targets: Sequence[str]) -> list[tuple[str, str]]:
  """(as given, as matched) per target, PEFT aliases resolved."""
  return [(t, ALIASES.get(t, t).strip("/")) for t in targets]


def _matches(pattern: str, module_path: str) -> bool:
  want, have = pattern.split("/"), module_path.split("/")
  return any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1))


def _kernel_entries(boxed_encoder: Any) -> list[tuple[tuple[str, ...], Any]]:
  """(path, boxed leaf) of every `kernel` in the encoder's boxed abstract params."""
  flat = jax.tree_util.tree_flatten_with_path(
      boxed_encoder, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  out = []
  for path, leaf in flat:
    keys = tuple(str(getattr(p, "key", p)) for p in path)
    if keys and keys[-1] == "kernel":
      out.append((keys, leaf))
  return out


def find_targets(boxed_encoder: Any, config: LoraConfig) -> list[Target]:
  """The encoder's kernels `config.targets` select, checked against the rank.

  boxed_encoder: the encoder's abstract params still boxed with logical names
    (`abstract_params(...)["encoder"]`).

  Raises:
    LoraError: a target that matches no kernel, or a rank above a kernel's
      smaller side.
  """
  kernels = _kernel_entries(boxed_encoder)
  modules = sorted({"/".join(p[:-1]) for p, _ in kernels})
  selected: dict[tuple[str, ...], Target] = {}
  for given, pattern in _expand(config.targets):
    hits = [(p, leaf) for p, leaf in kernels if _matches(pattern, "/".join(p[:-1]))]
    if not hits:
      examples = sorted({m.split("/", 1)[-1] for m in modules})[:8]
      raise LoraError(f"train.lora_targets: {given!r} matches no projection of the encoder; its "
                      f"kernels are e.g. {examples}")
    for path, leaf in hits:
      selected[path] = _target(path, leaf)
  for target in selected.values():
    limit = min(target.in_size, target.out_size)
    if config.rank > limit:
      raise LoraError(f"train.lora_rank={config.rank} exceeds the size of {target.module_path} "
                      f"({target.in_size} x {target.out_size}: at most {limit})")
  return [selected[p] for p in sorted(selected)]


def _target(path: tuple[str, ...], leaf: Any) -> Target:
  names = tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else (None,) * len(leaf.shape)
  value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
  lead = 1 if names and names[0] == SCANNED_AXIS else 0
  own = names[lead:]
  if own and own[0] == _PROJECTION_AXIS:
    num_in = 1
  elif own and own[-1] == _PROJECTION_AXIS:
    num_in = len(own) - 1
  else:
    raise LoraError(f"train.lora_targets: {'/'.join(path[:-1])} is not a projection to or from "
                    f"the model width (axes {own}); LoRA adapts those only")
  return Target(path, tuple(value.shape), names, lead, num_in)


def _nest(entries: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in entries.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def adapter_path(target: Target) -> tuple[str, ...]:
  """The adapters' place in the adapter tree: the kernel's module path."""
  return target.path[:-1]


def abstract_adapters(targets: Sequence[Target], rank: int, dtype: Any = jnp.float32) -> Any:
  """The adapter tree's shapes, boxed with logical names (for `partitioning.logical_to_shardings`).

  {module path...: {"lora_a": [*lead, *in, r], "lora_b": [*lead, r, *out]}}.
  """
  entries = {}
  for t in targets:
    (a_shape, b_shape), (a_names, b_names) = t.factor_shapes(rank), t.factor_names()
    entries[(*adapter_path(t), A_NAME)] = nn.Partitioned(
        jax.ShapeDtypeStruct(a_shape, dtype), names=a_names)
    entries[(*adapter_path(t), B_NAME)] = nn.Partitioned(
        jax.ShapeDtypeStruct(b_shape, dtype), names=b_names)
  return _nest(entries)


def init_adapters(rng: jax.Array, targets: Sequence[Target], rank: int,
                  dtype: Any = jnp.float32) -> Any:
  """Fresh adapters (unboxed): lora_a ~ U(+-1/sqrt(fan_in)) (PEFT's default), lora_b = 0.

  Jit it with the adapter shardings as out_shardings to create them sharded.
  """
  entries = {}
  for i, t in enumerate(targets):
    a_shape, b_shape = t.factor_shapes(rank)
    bound = 1.0 / math.sqrt(t.in_size)
    entries[(*adapter_path(t), A_NAME)] = jax.random.uniform(
        jax.random.fold_in(rng, i), a_shape, dtype, -bound, bound)
    entries[(*adapter_path(t), B_NAME)] = jnp.zeros(b_shape, dtype)
  return _nest(entries)


def delta(a: jax.Array, b: jax.Array, num_in: int, lead: int, scale: float) -> jax.Array:
  """scale * a @ b over the rank axis: a [*lead, *in, r], b [*lead, r, *out] -> [*lead, *in, *out]."""
  lead_shape = a.shape[:lead]
  in_shape, out_shape = a.shape[lead:lead + num_in], b.shape[lead + 1:]
  rank = a.shape[-1]
  a2 = a.reshape(*lead_shape, math.prod(in_shape), rank)
  b2 = b.reshape(*lead_shape, rank, math.prod(out_shape))
  return (scale * jnp.matmul(a2, b2)).reshape(*lead_shape, *in_shape, *out_shape)


def merge(base: Any, adapters: Any, scale: float) -> Any:
  """The encoder's params with every adapted kernel replaced by W + scale * lora_a @ lora_b.

  base: the encoder's params; adapters: the tree `init_adapters` makes. The
  result has base's structure and dtypes (the sum is formed in the wider of
  the two dtypes).
  """
  def walk(node, adapter):
    if isinstance(adapter, Mapping) and A_NAME in adapter:
      kernel = node["kernel"]
      a, b = adapter[A_NAME], adapter[B_NAME]
      lead = _lead_of(kernel.shape, a.shape, b.shape)
      num_in = a.ndim - 1 - lead
      update = delta(a, b, num_in, lead, scale)
      dtype = jnp.promote_types(kernel.dtype, update.dtype)
      return {**node, "kernel": (kernel.astype(dtype) + update.astype(dtype)).astype(kernel.dtype)}
    out = dict(node)
    for key, sub in adapter.items():
      out[key] = walk(node[key], sub)
    return out
  return walk(base, adapters)


def _lead_of(kernel_shape, a_shape, b_shape) -> int:
  """Leading stacked axes: kernel = lead + in + out axes, a = lead + in + 1, b = lead + 1 + out."""
  return len(a_shape) + len(b_shape) - 2 - len(kernel_shape)


def adapter_leaves(adapters: Any) -> dict[str, Any]:
  """{"module/path/lora_a": array, ...}: the adapter tree flattened by '/'-joined paths."""
  flat = jax.tree_util.tree_flatten_with_path(adapters)[0]
  return {"/".join(str(getattr(p, "key", p)) for p in path): leaf for path, leaf in flat}


def adapters_from_leaves(leaves: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `adapter_leaves`."""
  return _nest({tuple(k.split("/")): v for k, v in leaves.items()})
