"""Distillation from a teacher's scores of each pair's positive and hard negatives.

Row-local: row i's positive and hard negatives live on row i's shard, so the
same code serves every impl (under jit, sharded inputs stay sharded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DISTILL_KINDS = ("kl", "margin_mse")


def distill_loss(
    x: jax.Array,
    y: jax.Array,
    hard: jax.Array | None,
    valid: jax.Array | None,
    teacher_scores: jax.Array,
    log_temp: jax.Array,
    *,
    kind: str,
    temperature: float,
    student_temperature: float | None,
) -> jax.Array:
  """The distillation term: float32 scalar.

  The student's scores of row i are its cosines [x_i . y_i, x_i . h_i1, ...,
  x_i . h_iH] times exp(log_temp) (or divided by `student_temperature`); the
  teacher's are `teacher_scores` [B, 1+H] divided by `temperature`. Missing
  hard negatives (`valid` False) take part in neither.

  kind "kl": the mean over rows of KL(teacher softmax || student softmax).
  kind "margin_mse": the mean over (row, valid negative) of
    ((s_pos - s_neg) - (t_pos - t_neg))^2.
  """
  positive = jnp.sum(x * y, axis=-1, keepdims=True)
  cosine = positive if hard is None else jnp.concatenate(
      [positive, jnp.einsum("bd,bhd->bh", x, hard)], axis=1)
  student = cosine / student_temperature if student_temperature else jnp.exp(log_temp) * cosine
  teacher = jax.lax.stop_gradient(teacher_scores.astype(jnp.float32)) / temperature
  use = jnp.ones(cosine.shape, bool)
  if valid is not None:
    use = use.at[:, 1:].set(valid)
  teacher = jnp.where(use, teacher, 0.0)  # a missing negative's teacher score may be anything
  if kind == "margin_mse":
    error = (student[:, :1] - student[:, 1:]) - (teacher[:, :1] - teacher[:, 1:])
    mask = use[:, 1:]
    return jnp.sum(jnp.where(mask, error**2, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
  log_teacher = jax.nn.log_softmax(jnp.where(use, teacher, -jnp.inf), axis=1)
  log_student = jax.nn.log_softmax(jnp.where(use, student, -jnp.inf), axis=1)
  log_teacher = jnp.where(use, log_teacher, 0.0)
  log_student = jnp.where(use, log_student, 0.0)
  kl = jnp.sum(jnp.where(use, jnp.exp(log_teacher) * (log_teacher - log_student), 0.0), axis=1)
  return jnp.mean(kl)
