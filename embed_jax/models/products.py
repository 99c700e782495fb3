"""Products of low-precision operands accumulated in float32, in the forward and the backward pass.

XLA:CPU runs a product whose output is bfloat16 as a float32 product (on this
repository's AMX CPU, 158 GFLOP/s against 1,140 for bfloat16 operands with a
float32 output), and autodiff of `tensordot(..., preferred_element_type=f32)`
feeds float32 cotangents to the backward products, which makes them float32
too. `tensordot_f32_accumulate` keeps all three products of a dense layer
(forward, input gradient, kernel gradient) at bfloat16 operands with float32
accumulation, each result cast back to its operand's dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def tensordot_f32_accumulate(x: jax.Array, kernel: jax.Array, contracted: int) -> jax.Array:
  """x [..., *in] . kernel [*in, *out] -> [..., *out] in x's dtype, accumulated in float32.

  `contracted` = len(in). Operands must share a dtype; for float32 this is a
  plain tensordot (autodiff of it is already float32 throughout).
  """
  if x.dtype == jnp.float32:
    return _forward(x, kernel, contracted)
  return _low_precision(x, kernel, contracted)


def _forward(x, kernel, contracted):
  axes = (tuple(range(x.ndim - contracted, x.ndim)), tuple(range(contracted)))
  return jnp.tensordot(x, kernel, axes=axes, preferred_element_type=jnp.float32).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_precision(x, kernel, contracted):
  return _forward(x, kernel, contracted)


def _low_precision_fwd(x, kernel, contracted):
  return _forward(x, kernel, contracted), (x, kernel)


def _low_precision_bwd(contracted, residuals, d_y):
  x, kernel = residuals
  d_y = d_y.astype(x.dtype)
  out_dims = kernel.ndim - contracted
  batch_dims = x.ndim - contracted
  d_x = jnp.tensordot(d_y, kernel, axes=(tuple(range(d_y.ndim - out_dims, d_y.ndim)),
                                         tuple(range(contracted, kernel.ndim))),
                      preferred_element_type=jnp.float32)
  d_kernel = jnp.tensordot(x, d_y, axes=(tuple(range(batch_dims)), tuple(range(batch_dims))),
                           preferred_element_type=jnp.float32)
  return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


_low_precision.defvjp(_low_precision_fwd, _low_precision_bwd)
