"""The optimizer: AdamW, warmup then cosine or linear decay, global-norm clipping.

Weight decay applies to matrices only (kernels and embedding tables); norms'
scales, biases and the log-temperature are not decayed. The temperature's
clamp lives in the model (`DualEncoder.log_temperature`), not here.
"""

from __future__ import annotations

from typing import Any

import gin
import jax
import optax

DECAYS = ("cosine", "linear", "constant")
DECAYED_PARAM_NAMES = ("kernel", "embedding")


@gin.configurable
def learning_rate_schedule(
    total_steps: int,
    learning_rate: float = 1e-4,
    warmup_steps: int = 100,
    decay: str = "cosine",
    end_factor: float = 0.0,
) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then `decay` to `end_factor * learning_rate`.

  Args:
    total_steps: the run's length; the decay ends there.
    warmup_steps: steps of linear warmup (capped at total_steps).
    decay: "cosine", "linear" or "constant".
  """
  if decay not in DECAYS:
    raise ValueError(f"learning_rate_schedule.decay must be one of {DECAYS}, got {decay!r}")
  warmup_steps = max(0, min(int(warmup_steps), int(total_steps)))
  rest = max(1, int(total_steps) - warmup_steps)
  end = learning_rate * end_factor
  if decay == "cosine":
    after = optax.cosine_decay_schedule(learning_rate, rest, alpha=end_factor)
  elif decay == "linear":
    after = optax.linear_schedule(learning_rate, end, rest)
  else:
    after = optax.constant_schedule(learning_rate)
  if not warmup_steps:
    return after
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, after], [warmup_steps])


def weight_decay_mask(params: Any) -> Any:
  """True for the leaves to decay: those named `kernel` or `embedding` (matrices)."""
  def decayed(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return str(name) in DECAYED_PARAM_NAMES
  return jax.tree_util.tree_map_with_path(decayed, params)


@gin.configurable
def make_optimizer(
    total_steps: int,
    schedule: optax.Schedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    clip_norm: float | None = 1.0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(AdamW with clipping and the decay mask, its learning-rate schedule).

  `schedule` defaults to `learning_rate_schedule(total_steps)` from gin.
  """
  schedule = schedule if schedule is not None else learning_rate_schedule(total_steps)
  parts = []
  if clip_norm:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=weight_decay_mask))
  return optax.chain(*parts), schedule
