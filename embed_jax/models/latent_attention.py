"""NV-Embed's latent-attention pooling block (before the masked mean).

Each token's last hidden state h [D] is a query over a trainable latent array
(r latents, [r, D]) that serves as keys and values, per head (H heads of D/H):

    a = h + Wo · concat_h softmax(q_h k_h^T / sqrt(D/H)) v_h
        with q = h Wq, k = latents Wk, v = latents Wv
    o = a + W2 gelu(W1 a)          (the MLP, 4D wide, exact GELU)

then `pooling.mean_pool` averages o over each text's real tokens (prompt
tokens excluded). Tokens never see each other here, so the block is the same
on padded and on packed rows. The attention is computed in float32.

Params (under the dual encoder's `latent_pool`):
  latents [r, D]                    (None, "embed")
  query, key, value/kernel [D, H, D/H]  ("embed", "heads", "head_dim")
  out/kernel [H, D/H, D]            ("heads", "head_dim", "embed")
  mlp/{wi [D, 4D], wo [4D, D]}/{kernel, bias}
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from embed_jax.errors import ConfigError
from embed_jax.models import layers


def check_settings(d_model: int, num_latents: int, num_heads: int) -> None:
  """Raises a ConfigError naming the setting when the latent block cannot be built."""
  if num_latents < 1:
    raise ConfigError(
        f"DualEncoderConfig.latent_attention_latents must be >= 1, got {num_latents}")
  if num_heads < 1 or d_model % num_heads:
    raise ConfigError(
        f"DualEncoderConfig.latent_attention_heads={num_heads} does not divide the model width "
        f"d_model={d_model}")


class LatentAttention(nn.Module):
  """hidden [..., L, D] -> [..., L, D]: cross-attention to trainable latents, then an MLP."""
  num_latents: int
  num_heads: int
  init_std: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    d_model = hidden.shape[-1]
    head_dim = d_model // self.num_heads
    common = dict(use_bias=False, init_std=self.init_std, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    latents = self.param(
        "latents", layers.partitioned(nn.initializers.normal(self.init_std), (None, "embed")),
        (self.num_latents, d_model), self.param_dtype)
    heads = (self.num_heads, head_dim)
    query = layers.dense(heads, ("embed",), ("heads", "head_dim"), name="query", **common)(hidden)
    # The latents' projections are a few r x D x D products: float32 (XLA:CPU lacks the
    # bfloat16 kernel-gradient product of an unbatched [r, D] input).
    latent_common = dict(common, dtype=jnp.float32)
    key = layers.dense(heads, ("embed",), ("heads", "head_dim"), name="key", **latent_common)(latents)
    value = layers.dense(heads, ("embed",), ("heads", "head_dim"), name="value",
                         **latent_common)(latents)
    # float32 throughout: a few % of the encoder's FLOPs, and XLA:CPU has no bfloat16 dot with a
    # float32 output for these (batched) shapes.
    f32 = jnp.float32
    logits = jnp.einsum("...nh,rnh->...nr", query.astype(f32), key.astype(f32))
    probs = jax.nn.softmax(logits / jnp.sqrt(f32(head_dim)), axis=-1)
    attended = jnp.einsum("...nr,rnh->...nh", probs, value.astype(f32)).astype(hidden.dtype)
    x = hidden + layers.dense(d_model, ("heads", "head_dim"), ("embed",), name="out",
                              **common)(attended)
    return x + layers.Mlp(
        d_ff=4 * d_model, activation="gelu", gated=False, use_bias=True, init_std=self.init_std,
        out_init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")(x)
