"""Building blocks shared by the decoder and the BERT encoder.

Every parameter is created through `nn.with_logical_partitioning`, so its
logical axis names ("vocab", "embed", "mlp", "heads", "kv_heads", "head_dim")
travel with it and `partitioning.logical_to_shardings` can place it on a mesh.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from embed_jax.models.products import tensordot_f32_accumulate

# (batch, length, embed): the layout of hidden states between layers.
HIDDEN_AXES = ("batch", "length", "embed")

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    # GPT-2's "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
NORMS = ("layernorm", "rmsnorm")


def check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
  """Raises a ValueError naming `kind`, the bad `value` and the valid choices."""
  if value not in choices:
    raise ValueError(f"unknown {kind} {value!r}; expected one of {sorted(choices)}")


def partitioned(init: nn.initializers.Initializer, names: Sequence[str | None]):
  """`init` whose result is boxed with logical axis `names`."""
  return nn.with_logical_partitioning(init, tuple(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside `partitioning.activate`."""
  return nn.with_logical_constraint(x, tuple(names))


def matrix_normal(std: float, num_in_dims: int) -> nn.initializers.Initializer:
  """Normal(0, std) drawn as a [fan_in, fan_out] matrix, then reshaped to the kernel's shape.

  Same distribution as drawing the shape directly, but XLA on CPU compiles the
  (partitionable) threefry generator for high-rank shapes very slowly.
  """
  def init(key, shape, dtype=jnp.float32):
    matrix = (math.prod(shape[:num_in_dims]), math.prod(shape[num_in_dims:]))
    return nn.initializers.normal(std)(key, matrix, dtype).reshape(shape)
  return init


class Dense(nn.Module):
  """Linear map contracting the last `num_contracted` axes of x into `features`.

  kernel: [*x.shape[-num_contracted:], *features] named `in_names + out_names`;
  bias: [*features] named `out_names`. E.g. a query projection maps
  [B, L, embed] to [B, L, heads, head_dim] with a kernel [embed, heads, head_dim].
  (flax's DenseGeneral initialises a flat kernel and reshapes it, which breaks
  the logical constraint of a boxed initialiser under a mesh.)
  """
  features: tuple[int, ...]
  in_names: tuple[str | None, ...]
  out_names: tuple[str | None, ...]
  use_bias: bool
  init_std: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    contracted = len(self.in_names)
    kernel = self.param(
        "kernel", partitioned(matrix_normal(self.init_std, contracted), self.in_names + self.out_names),
        (*x.shape[x.ndim - contracted:], *self.features), self.param_dtype)
    y = tensordot_f32_accumulate(x.astype(self.dtype), kernel.astype(self.dtype), contracted)
    if self.use_bias:
      bias = self.param("bias", partitioned(nn.initializers.zeros_init(), self.out_names),
                        self.features, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def dense(
    features: int | Sequence[int],
    in_names: Sequence[str | None],
    out_names: Sequence[str | None],
    *,
    use_bias: bool,
    init_std: float,
    dtype: jnp.dtype,
    param_dtype: jnp.dtype,
    name: str,
) -> Dense:
  """A `Dense` contracting len(in_names) trailing axes into `features` (an int or a shape)."""
  features = (features,) if isinstance(features, int) else tuple(features)
  return Dense(features=features, in_names=tuple(in_names), out_names=tuple(out_names),
               use_bias=use_bias, init_std=init_std, dtype=dtype, param_dtype=param_dtype, name=name)


def norm(kind: str, *, epsilon: float, dtype: jnp.dtype, param_dtype: jnp.dtype, name: str):
  """LayerNorm (scale and bias) or RMSNorm (scale only) over the last axis, statistics in float32."""
  check_choice("norm", kind, NORMS)
  scale_init = partitioned(nn.initializers.ones_init(), ("embed",))
  if kind == "rmsnorm":
    return nn.RMSNorm(
        epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init,
        use_fast_variance=False, name=name)
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init,
      bias_init=partitioned(nn.initializers.zeros_init(), ("embed",)),
      use_fast_variance=False, name=name)


def embedding(
    num_embeddings: int, features: int, row_name: str | None, *,
    init_std: float, dtype: jnp.dtype, param_dtype: jnp.dtype, name: str) -> nn.Embed:
  """A lookup table [num_embeddings, features] with logical names (row_name, "embed")."""
  return nn.Embed(
      num_embeddings=num_embeddings,
      features=features,
      dtype=dtype,
      param_dtype=param_dtype,
      embedding_init=partitioned(nn.initializers.normal(init_std), (row_name, "embed")),
      name=name,
  )


class Mlp(nn.Module):
  """Position-wise feed-forward block: [B, L, D] -> [B, L, D].

  Plain: wo(act(wi(x))) (GPT-2, BERT). Gated: wo(act(wi_gate(x)) * wi_up(x))
  (SwiGLU with act="silu", as in Llama). Dropout is left to the caller.
  """
  d_ff: int
  activation: str
  gated: bool
  use_bias: bool
  init_std: float
  out_init_std: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_choice("activation", self.activation, ACTIVATIONS)
    act = ACTIVATIONS[self.activation]
    common = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.gated:
      gate = dense(self.d_ff, ("embed",), ("mlp",), init_std=self.init_std, name="wi_gate", **common)(x)
      up = dense(self.d_ff, ("embed",), ("mlp",), init_std=self.init_std, name="wi_up", **common)(x)
      h = act(gate) * up
    else:
      h = act(dense(self.d_ff, ("embed",), ("mlp",), init_std=self.init_std, name="wi", **common)(x))
    h = constrain(h, ("batch", "length", "mlp"))
    return dense(x.shape[-1], ("mlp",), ("embed",), init_std=self.out_init_std, name="wo", **common)(h)


def check_length(length: int, max_length: int, config_name: str) -> None:
  """Rejects inputs longer than the learned position table (a lookup past it would give NaNs)."""
  if length > max_length:
    raise ValueError(
        f"input length {length} exceeds the {max_length} learned positions "
        f"({config_name}.max_length)")
