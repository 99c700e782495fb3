"""Bad input raises a ValueError saying what was expected; gin reaches the loss's knobs."""

from __future__ import annotations

import gin
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.losses import contrastive_loss

X = np.zeros((8, 4), np.float32)


@pytest.mark.parametrize("kwargs,message", [
    (dict(y=np.zeros((8, 5), np.float32)), r"y must be a float array \[B, d\] = \[8, 4\]"),
    (dict(x=np.zeros((8,), np.float32)), r"x must be a float array \[B, d\]"),
    (dict(y=np.zeros((8, 4), np.int32)), r"y must be a float array"),
    (dict(log_temp=np.zeros(2)), "log_temp must be a scalar"),
    (dict(hard_negatives=np.zeros((8, 4), np.float32)), r"hard_negatives must be \[B, H, d\] = \[8, H, 4\]"),
    (dict(hard_negatives=np.zeros((4, 2, 4), np.float32)), r"hard_negatives must be"),
    (dict(mask_duplicates=np.zeros(7, np.int32)), r"mask_duplicates must be int ids \[B\] = \[8\]"),
    (dict(mask_duplicates=np.zeros(8, np.float32)), r"mask_duplicates must be int ids"),
    (dict(impl="blockwise"), "unknown impl 'blockwise'; expected one of"),
    (dict(impl="ring", tile_size=0), "tile_size must be a positive int"),
])
def test_bad_input_is_named(kwargs, message):
  args = dict(x=X, y=X, log_temp=0.0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    contrastive_loss(args.pop("x"), args.pop("y"), args.pop("log_temp"), **args)


@pytest.mark.parametrize("impl", ["gather", "ring"])
def test_batch_must_divide_over_the_batch_shards(impl):
  mesh = partitioning.create_mesh(data=4, fsdp=2)
  x = np.zeros((12, 4), np.float32)
  with pytest.raises(ValueError, match=r"batch size 12 is not divisible by the 8 shards"):
    contrastive_loss(x, x, 0.0, mesh=mesh, impl=impl)


def test_impl_and_tile_size_are_gin_configurable():
  gin.parse_config(["contrastive_loss.impl = 'ring'", "contrastive_loss.tile_size = -3"])
  with pytest.raises(ValueError, match="tile_size must be a positive int, got -3"):
    contrastive_loss(X, X, 0.0)
