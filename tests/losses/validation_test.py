"""Bad input raises a ConfigError (a ValueError) saying what was expected; the loss is set in
the objective, not in gin."""

from __future__ import annotations

import gin
import jax
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.errors import ConfigError
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


def test_loss_settings_live_in_the_objective_not_on_the_function():
  # One setting, one place: ContrastiveObjective passes every option explicitly,
  # so a binding on contrastive_loss would be silently ignored; gin refuses it.
  with pytest.raises(ValueError, match="contrastive_loss"):
    gin.parse_config(["contrastive_loss.impl = 'ring'"])
  gin.clear_config()


H = np.zeros((8, 2, 4), np.float32)
G = np.ones((8, 3), np.float32)


@pytest.mark.parametrize("kwargs,message", [
    (dict(hard_negatives=H, hard_negative_mask=np.ones((8, 3), bool)),
     r"hard_negative_mask must be \[B, H\] = \[8, 2\]"),
    (dict(matryoshka_dims=(2, 8)), r"matryoshka_dims \(2, 8\): 8 is larger than the embedding "
                                   r"dimension 4"),
    (dict(matryoshka_dims=(3, 2)), "matryoshka_dims must be increasing"),
    (dict(matryoshka_dims=(2, 4), matryoshka_weights=(1.0, 2.0, 3.0)),
     "matryoshka_weights must be 2 non-negative numbers"),
    (dict(directions=("x->y", "x->y")), "directions must be distinct entries of"),
    (dict(directions=("query_to_doc",)), "directions must be distinct entries of"),
    (dict(partition="both"), "partition must be one of"),
    (dict(guide=(G, G), guide_margin_kind="percent"), "guide_margin_kind must be one of"),
    (dict(guide=(G[:6], G[:6])), r"guide gx must be a float array \[B, dg\] with B = 8"),
    (dict(guide=(G, G[:, :2])), "guide gy must be a float array"),
    (dict(hard_negatives=H, guide=(G, G, np.ones((8, 1, 3), np.float32))),
     r"the guide's hard-negative embeddings must be \[B, H, dg\] = \[8, 2, 3\]"),
    (dict(hard_negatives=H, teacher_scores=np.zeros((8, 2), np.float32), distill="kl"),
     r"teacher_scores must be \[B, 1\+H\] = \[8, 3\]"),
    (dict(hard_negatives=H, teacher_scores=np.full((8, 3), np.nan, np.float32), distill="kl"),
     "teacher_scores hold NaN"),
    (dict(teacher_scores=np.zeros((8, 1), np.float32)), "teacher_scores are given but distill"),
    (dict(distill="margin_mse"), "needs teacher_scores"),
    (dict(distill="mse", teacher_scores=np.zeros((8, 1), np.float32)), "distill must be one of"),
    (dict(false_negative_margin=float("nan")), "false_negative_margin must be a finite number"),
])
def test_bad_term_settings_are_named(kwargs, message):
  with pytest.raises(ConfigError, match=message):
    contrastive_loss(X + 1.0, X + 1.0, 0.0, **kwargs)


def test_guide_sharded_unlike_x_is_refused():
  mesh = partitioning.create_mesh(data=8)
  x = jax.device_put(np.ones((8, 4), np.float32), partitioning.batch_sharding(mesh, 2))
  g = jax.device_put(np.ones((8, 3), np.float32),
                     jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  with pytest.raises(ConfigError, match="guide gx is sharded"):
    contrastive_loss(x, x, 0.0, mesh=mesh, guide=(g, g))
