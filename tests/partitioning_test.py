"""Mesh construction, rule overrides and logical-to-mesh shardings."""

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from embed_jax import gin_config, partitioning


@pytest.mark.parametrize("sizes,expected", [
    ((-1, 1, 1), (8, 1, 1)),
    ((4, -1, 1), (4, 2, 1)),
    ((2, 2, -1), (2, 2, 2)),
    ((1, 8, 1), (1, 8, 1)),
])
def test_resolve_mesh_shape_fills_the_rest(sizes, expected):
  assert partitioning.resolve_mesh_shape(sizes, 8) == expected


@pytest.mark.parametrize("sizes,message", [
    ((-1, -1, 1), "at most one"),
    ((3, -1, 1), "not divisible"),
    ((2, 2, 1), "needs 4 devices"),
    ((0, 1, 1), "positive"),
])
def test_resolve_mesh_shape_rejects_bad_sizes(sizes, message):
  with pytest.raises(partitioning.MeshShapeError, match=message):
    partitioning.resolve_mesh_shape(sizes, 8)


def test_create_mesh_from_gin():
  gin_config.parse([], ["create_mesh.data = 4", "create_mesh.fsdp = -1"])
  mesh = partitioning.create_mesh()
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert partitioning.batch_axes(mesh) == ("data", "fsdp")
  assert partitioning.batch_size_multiple(mesh) == 8


def test_create_mesh_on_a_subset_of_devices():
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}


def test_rule_overrides_replace_and_validate():
  rules = partitioning.logical_axis_rules(overrides=[("embed", None), ("mlp", ["fsdp", "tensor"])])
  assert dict(rules)["embed"] is None
  assert dict(rules)["mlp"] == ("fsdp", "tensor")
  assert dict(rules)["batch"] == ("data", "fsdp")
  with pytest.raises(ValueError, match="mesh axis 'model'"):
    partitioning.logical_axis_rules(overrides=[("mlp", "model")])


def test_fit_spec_drops_axes_that_do_not_divide():
  mesh = partitioning.create_mesh(data=2, fsdp=2, tensor=2)
  assert partitioning.fit_spec_to_shape(P("tensor", "fsdp"), (50257, 768), mesh) == P(None, "fsdp")
  assert partitioning.fit_spec_to_shape(P(("data", "fsdp")), (6,), mesh) == P("data")


class _Dense(nn.Module):

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(), ("embed", "mlp")), (x.shape[-1], 16))
    bias = self.param("bias", nn.initializers.zeros, (16,))
    y = x @ kernel + bias
    return nn.with_logical_constraint(y, ("batch", "mlp"))


def test_logical_to_shardings_and_sharded_init_match_unsharded():
  mesh = partitioning.create_mesh(data=2, fsdp=2, tensor=2)
  module = _Dense()
  x = jnp.ones((8, 4))
  init = lambda: module.init(jax.random.key(0), x)
  abstract = jax.eval_shape(init)
  shardings = partitioning.logical_to_shardings(abstract, mesh)
  assert shardings["params"]["kernel"].spec == P("fsdp", "tensor")
  assert shardings["params"]["bias"].spec == P()
  with partitioning.activate(mesh):
    variables = jax.jit(lambda: nn.meta.unbox(init()), out_shardings=shardings)()
    y = jax.jit(module.apply)(variables, x)
  plain = nn.meta.unbox(init())
  # The fsdp-sharded contraction sums in another order: float32 rounding, no more.
  np.testing.assert_allclose(y, module.apply(plain, x), rtol=1e-5, atol=1e-7)
  assert variables["params"]["kernel"].sharding.spec == P("fsdp", "tensor")


def test_batch_sharding_spec():
  mesh = partitioning.create_mesh(data=4, fsdp=2)
  assert partitioning.batch_sharding(mesh, 2).spec == P(("data", "fsdp"), None)
