"""Every impl with today's loss terms against an independent dense float64 oracle.

The oracle below is written from the definitions in plain jnp on the global
arrays, in float64 (its gradients by autodiff), sharing no code with the
library. Each term is checked alone on one mesh and all of them together on
the meshes (8,), (4, 2) and (2, 2, 2); every case has hard negatives with
missing ones, duplicate ids, per-shard row counts that are not powers of two
and ring tiles that do not divide them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embed_jax import partitioning
from embed_jax.losses import contrastive_loss

ARRAYS = ("hard", "valid", "ids", "gx", "gy", "gh", "teacher")


def oracle(x, y, log_temp, hard, valid, ids, gx, gy, gh, teacher, *, matryoshka_dims=None,
           matryoshka_weights=None, directions=("x->y", "y->x"), partition="per_direction",
           guided=False, guide_margin=0.0, guide_margin_kind="absolute",
           false_negative_margin=None, distill=None, distill_weight=1.0,
           distill_temperature=1.0, distill_student_temperature=None):
  """The loss in float64 on global arrays, from the definitions."""
  batch, heads = hard.shape[:2]
  scale = jnp.exp(log_temp)
  same = jnp.eye(batch, dtype=bool) | (ids[:, None] == ids[None, :])
  valid_flat = valid.reshape(-1)

  def threshold(positive, margin):
    return margin * positive if guide_margin_kind == "relative" else positive - margin

  guide_positive = jnp.sum(gx * gy, axis=1)

  def one_prefix(x, y, hard):
    hard_flat = hard.reshape(batch * heads, -1)
    positive = jnp.sum(x * y, axis=1)
    # direction -> [(scores, guide scores, which are candidates)], rows = anchors i.
    blocks = {
        "x->y": [(x @ y.T, gx @ gy.T, ~same),
                 (x @ hard_flat.T, gx @ gh.reshape(batch * heads, -1).T,
                  jnp.broadcast_to(valid_flat, (batch, batch * heads)))],
        "y->x": [(y @ x.T, gy @ gx.T, ~same)],
        "x->x": [(x @ x.T, gx @ gx.T, ~same)],
        "y->y": [(y @ y.T, gy @ gy.T, ~same)],
    }
    negatives = {}
    for name in directions:
      parts = []
      for scores, guide_scores, candidate in blocks[name]:
        keep = candidate
        if guided:
          keep = keep & ~(guide_scores > threshold(guide_positive, guide_margin)[:, None])
        if false_negative_margin is not None:
          keep = keep & ~(jax.lax.stop_gradient(scores)
                          > threshold(jax.lax.stop_gradient(positive), false_negative_margin)[:, None])
        parts.append(jnp.where(keep, scale * scores, -jnp.inf))
      negatives[name] = jnp.concatenate(parts, axis=1)

    def cross_entropy(neg):
      everything = jnp.concatenate([scale * positive[:, None], neg], axis=1)
      return jax.scipy.special.logsumexp(everything, axis=1) - scale * positive

    if partition == "joint":
      loss = jnp.mean(cross_entropy(jnp.concatenate(list(negatives.values()), axis=1)))
    else:
      loss = sum(jnp.sum(cross_entropy(n)) for n in negatives.values()) / (len(directions) * batch)
    if distill is not None:
      cosine = jnp.concatenate([positive[:, None], jnp.einsum("bd,bhd->bh", x, hard)], axis=1)
      student = (cosine / distill_student_temperature if distill_student_temperature
                 else scale * cosine)
      target = teacher / distill_temperature
      use = jnp.concatenate([jnp.ones((batch, 1), bool), valid], axis=1)
      if distill == "kl":
        log_t = jax.nn.log_softmax(jnp.where(use, target, -jnp.inf), axis=1)
        log_s = jax.nn.log_softmax(jnp.where(use, student, -jnp.inf), axis=1)
        term = jnp.mean(jnp.sum(jnp.where(use, jnp.exp(log_t) * (log_t - log_s), 0.0), axis=1))
      else:
        error = (student[:, :1] - student[:, 1:]) - (target[:, :1] - target[:, 1:])
        term = jnp.sum(jnp.where(valid, error**2, 0.0)) / jnp.sum(valid)
      loss = loss + distill_weight * term
    return loss

  if matryoshka_dims is None:
    return one_prefix(x, y, hard)
  weights = matryoshka_weights or (1.0,) * len(matryoshka_dims)
  unit = lambda a: a / jnp.sqrt(jnp.sum(a * a, axis=-1, keepdims=True))
  return sum(w * one_prefix(unit(x[:, :d]), unit(y[:, :d]), unit(hard[..., :d]))
             for d, w in zip(matryoshka_dims, weights))


def make_batch(batch, dim=12, heads=2, guide_dim=6, seed=0):
  """Unit embeddings with some duplicated y texts, a missing negative per 3 rows, a guide."""
  rng = np.random.default_rng(seed)
  unit = lambda a: (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)
  x = unit(rng.normal(size=(batch, dim)))
  y = unit(rng.normal(size=(batch, dim)) + 1.5 * x)
  ids = np.arange(batch, dtype=np.int32)
  ids[1::5] = ids[0::5][:len(ids[1::5])]  # duplicate y texts (across shards too)
  for i in range(batch):
    y[i] = y[np.flatnonzero(ids == ids[i])[0]]
  hard = unit(rng.normal(size=(batch, heads, dim)) + 0.5 * x[:, None])
  valid = np.ones((batch, heads), bool)
  valid[::3, -1] = False
  guide_x = unit(x[:, :guide_dim] + 0.3 * rng.normal(size=(batch, guide_dim)))
  guide_y = unit(y[:, :guide_dim] + 0.3 * rng.normal(size=(batch, guide_dim)))
  guide_hard = unit(hard[..., :guide_dim] + 0.3 * rng.normal(size=(batch, heads, guide_dim)))
  teacher = rng.normal(size=(batch, 1 + heads)).astype(np.float32) * 3
  teacher[:, 0] += 4
  teacher[::3, -1] = -7.0  # a missing negative's score: ignored
  return dict(x=x, y=y, hard=hard, valid=valid, ids=ids, gx=guide_x, gy=guide_y, gh=guide_hard,
              teacher=teacher)


ALL = dict(matryoshka_dims=(5, 12), matryoshka_weights=(0.5, 2.0),
           directions=("x->y", "y->x", "x->x", "y->y"), partition="joint", guided=True,
           guide_margin=0.05, false_negative_margin=0.3, distill="kl", distill_weight=0.7,
           distill_temperature=2.0)
ALONE = {
    "matryoshka": dict(matryoshka_dims=(5, 12)),
    "directions": dict(directions=("x->y", "y->x", "x->x", "y->y")),
    "joint": dict(directions=("x->y", "y->x", "y->y"), partition="joint"),
    "guide": dict(guided=True, guide_margin=0.05),
    "false-negative": dict(false_negative_margin=0.2),
    "distill-kl": dict(distill="kl", distill_student_temperature=0.1),
}
# (terms, mesh shape, rows per batch shard, ring tile)
CASES = {f"{name}-4x2": (options, (4, 2, 1), 5, 2) for name, options in ALONE.items()}
CASES.update({"all-8": (ALL, (8, 1, 1), 3, 2), "all-4x2": (ALL, (4, 2, 1), 5, 3),
              "all-2x2x2": (ALL, (2, 2, 2), 5, 2),
              "all-per-direction-relative-margin-mse-4x2": (
                  dict(ALL, partition="per_direction", guide_margin=0.9,
                       guide_margin_kind="relative", false_negative_margin=0.95,
                       distill="margin_mse"), (4, 2, 1), 5, 2)})


def library_options(options):
  return {k: v for k, v in options.items() if k != "guided"}


@functools.lru_cache(maxsize=None)
def library_step(impl, mesh_shape, tile, case):
  options = CASES[case][0]
  mesh = partitioning.create_mesh(*mesh_shape)
  guided = options.get("guided", False)
  distills = options.get("distill") is not None

  def loss(x, y, log_temp, hard, valid, ids, gx, gy, gh, teacher):
    return contrastive_loss(
        x, y, log_temp, mesh=mesh, impl=impl, hard_negatives=hard, hard_negative_mask=valid,
        mask_duplicates=ids, tile_size=tile, guide=(gx, gy, gh) if guided else None,
        teacher_scores=teacher if distills else None, **library_options(options))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


@functools.lru_cache(maxsize=None)
def expected(case):
  """(data, loss, grads w.r.t. x, y, log_temp, hard) of the oracle in float64."""
  options, mesh_shape, rows, _ = CASES[case]
  data = make_batch(rows * mesh_shape[0] * mesh_shape[1], seed=rows)
  with jax.enable_x64(True):
    wide = {k: jnp.asarray(v, jnp.float64) if v.dtype == np.float32 else jnp.asarray(v)
            for k, v in data.items()}
    loss_fn = functools.partial(oracle, **options)
    value, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3)))(
        wide["x"], wide["y"], jnp.asarray(np.log(8.0), jnp.float64), *(wide[k] for k in ARRAYS))
    return data, float(value), [np.asarray(g) for g in grads]


# The dense reference runs with every term at once; the ring, whose backward is
# written by hand, also with the other margin kind, partition and distillation.
RUNS = ([(case, impl) for case in CASES if case.startswith("all-") and "margin-mse" not in case
         for impl in ("reference", "gather", "ring")]
        + [(case, impl) for case in CASES if not case.startswith("all-") for impl in ("gather", "ring")]
        + [("all-per-direction-relative-margin-mse-4x2", "ring")])


@pytest.mark.parametrize("case,impl", RUNS)
def test_loss_and_gradients_match_float64_oracle(assert_close, case, impl):
  _, mesh_shape, _, tile = CASES[case]
  data, expected_loss, expected_grads = expected(case)
  (loss, metrics), grads = library_step(impl, mesh_shape, tile, case)(
      data["x"], data["y"], np.float32(np.log(8.0)), *(data[k] for k in ARRAYS))
  assert_close(loss, expected_loss, name="loss")
  for name, grad, want in zip(("x", "y", "log_temp", "hard_negatives"), grads, expected_grads):
    assert_close(grad, want, name=f"d {name}")
  assert all(np.isfinite(float(v)) for v in metrics.values())
  if "masked_share" in metrics:  # the rules remove some candidates, not all
    assert 0.0 < float(metrics["masked_share"]) < 0.9
  if "distill_loss" in metrics:
    assert float(metrics["distill_loss"]) > 1e-3
