"""Device mesh, logical axis rules, and the shardings they give arrays.

Where an array lives is said once: modules annotate params and activations with
*logical* axis names ("batch", "embed", "mlp", ...); a rule table (overridable
from gin) maps each logical name to mesh axes; these helpers turn the result
into `jax.sharding.NamedSharding`s on a mesh with axes ("data", "fsdp", "tensor").
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from embed_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = tuple[tuple[str, Any], ...]

# Parameters use the plain names; activations carry "batch" and "length" too.
# A mesh axis is taken by the first logical axis of an array that claims it, so
# an activation ("batch", "length", "embed") shards its batch over (data, fsdp)
# and leaves "embed" unsharded, while a parameter ("vocab", "embed") puts its
# embedding dimension on fsdp.
DEFAULT_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
    ("head_dim", None),
    ("negatives", None),
)


class MeshShapeError(UserError):
  """The configured mesh does not fit the available devices."""


def resolve_mesh_shape(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces the single -1 in `sizes` by whatever makes the product `num_devices`.

  Args:
    sizes: one size per mesh axis; positive, or -1 (at most one) for "the rest".
    num_devices: the number of devices the mesh must use, all of them.

  Returns:
    The resolved sizes, whose product is `num_devices`.
  """
  sizes = tuple(int(s) for s in sizes)
  named = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
  if any(s == 0 or s < -1 for s in sizes):
    raise MeshShapeError(f"mesh sizes must be positive or -1, got ({named})")
  rest = [i for i, s in enumerate(sizes) if s == -1]
  if len(rest) > 1:
    raise MeshShapeError(f"at most one mesh axis may be -1, got ({named})")
  known = math.prod(s for s in sizes if s != -1)
  if rest:
    if num_devices % known:
      raise MeshShapeError(
          f"mesh ({named}): {num_devices} devices are not divisible by {known}")
    sizes = tuple(num_devices // known if s == -1 else s for s in sizes)
  if math.prod(sizes) != num_devices:
    raise MeshShapeError(
        f"mesh ({named}) needs {math.prod(sizes)} devices, but {num_devices} are available")
  return sizes


@gin.configurable
def create_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds a mesh with axes (data, fsdp, tensor) over all devices of all processes.

  One size may be -1, meaning "the rest". Devices are laid out by
  `jax.make_mesh`, which keeps each process's devices contiguous along the
  outer axes, so a data-parallel batch splits cleanly across hosts.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape((data, fsdp, tensor), len(devices))
  return jax.make_mesh(
      shape,
      MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
      devices=devices,
  )


def single_device_mesh() -> Mesh:
  """A (1, 1, 1) mesh on this process's first device, whatever sizes gin binds for the run's mesh."""
  return create_mesh(1, 1, 1, devices=jax.local_devices()[:1])


@gin.configurable
def logical_axis_rules(overrides: Sequence[tuple[str, Any]] = ()) -> LogicalRules:
  """The rule table: `DEFAULT_RULES` with `overrides` replacing rules of the same name.

  From gin: `logical_axis_rules.overrides = [("embed", None), ("mlp", "fsdp")]`.
  An override naming a new logical axis is added at the front.
  """
  overrides = tuple((str(name), _as_mesh_axes(target)) for name, target in overrides)
  for name, target in overrides:
    for axis in (target if isinstance(target, tuple) else (target,)):
      if axis is not None and axis not in MESH_AXES:
        raise MeshShapeError(
            f"logical axis rule ({name!r}, {target!r}) names mesh axis {axis!r}; "
            f"mesh axes are {MESH_AXES}")
  replaced = {name for name, _ in overrides}
  kept = tuple(rule for rule in DEFAULT_RULES if rule[0] not in replaced)
  return overrides + kept


def _as_mesh_axes(target: Any) -> Any:
  if isinstance(target, list):
    return tuple(target)
  return target


def batch_axes(mesh: Mesh, rules: LogicalRules | None = None) -> tuple[str, ...]:
  """The mesh axes that shard the "batch" logical axis (those the mesh has)."""
  rules = DEFAULT_RULES if rules is None else rules
  for name, target in rules:
    if name == "batch":
      targets = target if isinstance(target, tuple) else (target,)
      return tuple(a for a in targets if a is not None and a in mesh.axis_names)
  return ()


def batch_size_multiple(mesh: Mesh, rules: LogicalRules | None = None) -> int:
  """How many shards the batch dimension is split into (global batch must divide)."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int, rules: LogicalRules | None = None) -> NamedSharding:
  """Sharding of an array whose leading dimension is the batch, the rest replicated."""
  axes = batch_axes(mesh, rules)
  spec = PartitionSpec(axes if axes else None, *([None] * (ndim - 1)))
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of an array held whole on every device."""
  return NamedSharding(mesh, PartitionSpec())


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide evenly.

  Logical rules are written once for every model size; a vocabulary of 50,257
  rows cannot be split in two, so that dimension is replicated instead of failing.
  """
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    axes_tuple = axes if isinstance(axes, tuple) else (axes,)
    kept = []
    size = 1
    for axis in axes_tuple:
      if dim % (size * mesh.shape[axis]) == 0:
        kept.append(axis)
        size *= mesh.shape[axis]
    fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  while fitted and fitted[-1] is None:
    fitted.pop()
  return PartitionSpec(*fitted)


def logical_to_shardings(
    abstract_tree: Any, mesh: Mesh, rules: LogicalRules | None = None) -> Any:
  """Shardings for a tree of logically annotated values (e.g. `jax.eval_shape(init)`).

  Leaves boxed by `nn.with_logical_partitioning` get the sharding their names
  map to (fitted to their shape); unannotated leaves are replicated.

  Returns:
    A tree of `NamedSharding`, shaped like the unboxed `abstract_tree`.
  """
  rules = DEFAULT_RULES if rules is None else rules
  logical_specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(abstract_tree))
  return jax.tree.map(
      lambda spec, shape: NamedSharding(mesh, fit_spec_to_shape(spec, shape, mesh)),
      mesh_specs,
      shapes,
      is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


@contextlib.contextmanager
def activate(mesh: Mesh, rules: LogicalRules | None = None) -> Iterator[Mesh]:
  """Makes `mesh` and `rules` current, so that logical activation constraints apply."""
  rules = DEFAULT_RULES if rules is None else rules
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield mesh


def host_local_batch_slice(global_batch: int, *, process_count: int | None = None,
                           process_index: int | None = None) -> slice:
  """Rows of the global batch that this process feeds (processes split it evenly).

  `process_count` / `process_index` override jax's (tests of multi-host layouts).
  """
  count = jax.process_count() if process_count is None else process_count
  index = jax.process_index() if process_index is None else process_index
  if global_batch % count:
    raise MeshShapeError(
        f"global batch {global_batch} is not divisible by the {count} processes")
  per_process = global_batch // count
  return slice(index * per_process, (index + 1) * per_process)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def host_allgather(name: str, values: Sequence[int], timeout_s: int = 600) -> list[list[int]]:
  """Every process's `values` (a list of ints), in process order, exchanged by key `name`.

  Unlike `multihost_utils.process_allgather` this is not a device
  computation: it goes through the distributed runtime's key-value store, so
  a background thread (the trainer's batch prefetcher) can call it while the
  main thread runs collectives of the train step. Every process must call it
  with the same `name`, once. With one process it returns [values].
  """
  values = [int(v) for v in values]
  if jax.process_count() == 1:
    return [values]
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  client = distributed.global_state.client
  prefix = f"embed_jax/allgather/{name}"
  client.key_value_set(f"{prefix}/{jax.process_index()}", ",".join(map(str, values)))
  out = []
  for process in range(jax.process_count()):
    text = client.blocking_key_value_get(f"{prefix}/{process}", timeout_s * 1000)
    out.append([int(v) for v in text.split(",") if v])
  return out


def describe(mesh: Mesh) -> str:
  """One line naming the mesh shape and device kind, for logs."""
  shape = " x ".join(f"{a}={n}" for a, n in mesh.shape.items())
  kind = np.asarray(mesh.devices).flat[0].device_kind
  return f"mesh {shape} over {mesh.size} {kind} device(s), {jax.process_count()} process(es)"
