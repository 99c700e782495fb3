"""The dual encoder: ONE shared Transformer embeds both sides of a pair.

As in the paper, x and y texts pass through the same encoder; each side is
wrapped in its own delimiters (x: "[" ... "]", y: "{" ... "}", already in the
tokens) and, with eos pooling, pooled at its closing delimiter. An optional
linear projection and L2 normalisation follow. A learnable scalar
log-temperature scales the logits in the loss; its returned value is clamped
so that exp(log_temp) <= max_logit_scale.

Param tree (`params` collection):
  encoder/...                 the encoder's tree (see transformer.py, bert.py)
  projection/kernel [D, P]    ("embed", None); only with projection_dim
  log_temp []                 scalar, unclamped
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Union

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from embed_jax.models import layers, pooling
from embed_jax.models.bert import BertConfig, BertEncoder
from embed_jax.models.transformer import Decoder, DecoderConfig

EncoderConfig = Union[DecoderConfig, BertConfig]
SIDES = ("x", "y")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DualEncoderConfig:
  """The embedding model: encoder, pooling, delimiters, projection, temperature.

  In gin: `DualEncoderConfig.encoder = @DecoderConfig()` (or `@BertConfig()`).

  Attributes:
    encoder: the shared encoder's config.
    pooling: "eos" (hidden state at the side's closing delimiter), "last",
      "mean" or "cls".
    x_delimiter_ids: (open_id, close_id) of the x side's delimiters in the
      vocabulary; eos pooling needs them (the vocabulary side knows them).
    y_delimiter_ids: the same for the y side.
    projection_dim: size of a linear projection after pooling; None = none.
    normalize: L2-normalise the embeddings.
    log_temp_init: initial log-temperature (log of the logit scale).
    max_logit_scale: upper bound of exp(log_temp).
  """
  encoder: EncoderConfig
  pooling: str = "eos"
  x_delimiter_ids: tuple[int, int] | None = None
  y_delimiter_ids: tuple[int, int] | None = None
  projection_dim: int | None = None
  normalize: bool = True
  log_temp_init: float = math.log(1 / 0.07)
  max_logit_scale: float = 100.0

  def __post_init__(self):
    if not isinstance(self.encoder, (DecoderConfig, BertConfig)):
      raise TypeError(
          "DualEncoderConfig.encoder must be a DecoderConfig or BertConfig, "
          f"got {type(self.encoder).__name__}")
    layers.check_choice("pooling", self.pooling, pooling.POOLINGS)
    for side in SIDES:
      ids = getattr(self, f"{side}_delimiter_ids")
      if ids is not None:
        if len(ids) != 2:
          raise ValueError(
              f"DualEncoderConfig.{side}_delimiter_ids must be (open_id, close_id), got {ids!r}")
        object.__setattr__(self, f"{side}_delimiter_ids", tuple(int(i) for i in ids))
    if self.projection_dim is not None and self.projection_dim < 1:
      raise ValueError(f"DualEncoderConfig.projection_dim must be positive, got {self.projection_dim}")
    if self.max_logit_scale <= 0:
      raise ValueError(f"DualEncoderConfig.max_logit_scale must be > 0, got {self.max_logit_scale}")

  def closing_id(self, side: str) -> int:
    """Token id of `side`'s closing delimiter (the eos pooling position)."""
    layers.check_choice("side", side, SIDES)
    ids = getattr(self, f"{side}_delimiter_ids")
    if ids is None:
      raise ValueError(
          f"pooling='eos' needs DualEncoderConfig.{side}_delimiter_ids = (open_id, close_id), "
          "the vocabulary's ids of that side's delimiters")
    return ids[1]


def build_encoder(config: EncoderConfig) -> nn.Module:
  """The encoder module a config describes (`Decoder` or `BertEncoder`)."""
  if isinstance(config, DecoderConfig):
    return Decoder(config)
  if isinstance(config, BertConfig):
    return BertEncoder(config)
  raise TypeError(f"no encoder for config type {type(config).__name__}")


def build_dual_encoder(config: DualEncoderConfig) -> DualEncoder:
  """The `DualEncoder` module for `config`."""
  return DualEncoder(config)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x [..., d] / ||x||, computed in float32 (zero rows stay zero)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class DualEncoder(nn.Module):
  """One shared encoder for both sides; `embed` one side, `__call__` both plus log_temp."""
  config: DualEncoderConfig

  def setup(self):
    cfg = self.config
    self.encoder = build_encoder(cfg.encoder)
    if cfg.projection_dim is not None:
      self.projection = layers.dense(
          cfg.projection_dim, ("embed",), (None,), use_bias=False,
          init_std=cfg.encoder.init_std, dtype=jnp.dtype(cfg.encoder.dtype),
          param_dtype=jnp.dtype(cfg.encoder.param_dtype), name="projection")
    self.raw_log_temp = self.param(
        "log_temp", layers.partitioned(nn.initializers.constant(cfg.log_temp_init), ()), (),
        jnp.float32)

  def embed(
      self,
      tokens: jax.Array,
      mask: jax.Array,
      *,
      side: str = "x",
      positions: jax.Array | None = None,
      deterministic: bool = True,
  ) -> jax.Array:
    """Embeds one side: tokens, mask [B, L] (delimiters included) -> float32 [B, d].

    d is projection_dim, or the encoder's d_model without a projection; rows
    have unit L2 norm when `normalize`.
    """
    cfg = self.config
    layers.check_choice("side", side, SIDES)
    eos_id = cfg.closing_id(side) if cfg.pooling == "eos" else None
    hidden = self.encoder(tokens, mask, positions=positions, deterministic=deterministic)
    return self._finish(pooling.pool(hidden, tokens, mask, cfg.pooling, eos_id=eos_id))

  def embed_packed(
      self,
      tokens: jax.Array,
      segment_ids: jax.Array,
      text_of_token: jax.Array,
      pool_index: jax.Array,
      *,
      groups: int = 1,
      deterministic: bool = True,
  ) -> jax.Array:
    """Embeds N texts packed into R rows (`embed_jax.data.packing`): float32 [N, d].

    tokens, segment_ids, text_of_token: [R, L]; pool_index: [N]. Equals `embed`
    on the unpacked texts: attention and positions stay inside each segment,
    and the side's delimiters (hence its eos position) are in `pool_index`.

    groups: the rows and texts form this many independent packings, equal
      consecutive blocks of R/groups rows and N/groups texts, each with
      `text_of_token` and `pool_index` local to its block (as
      `data.packed_batches` lays them out). Pooling is batched over the
      groups (a vmap), so a leading dimension sharded in groups (the mesh's
      batch shards) stays sharded: no gathers across devices.
    """
    rows, length = tokens.shape
    if rows % groups or pool_index.shape[0] % groups:
      raise ValueError(f"{rows} rows and {pool_index.shape[0]} texts do not split into "
                       f"{groups} groups")
    hidden = self.encoder(tokens, segment_ids > 0, segment_ids=segment_ids,
                          deterministic=deterministic)
    hidden = layers.constrain(hidden.reshape(groups, rows // groups, length, -1),
                              ("batch", None, "length", "embed"))
    pool = functools.partial(pooling.pool_packed, method=self.config.pooling)
    pooled = jax.vmap(pool)(hidden, pool_index.reshape(groups, -1),
                            text_of_token.reshape(groups, rows // groups, length))
    pooled = layers.constrain(pooled, ("batch", None, "embed"))
    return self._finish(pooled.reshape(pool_index.shape[0], -1))

  def _finish(self, pooled: jax.Array) -> jax.Array:
    """Projection (if any), float32 and L2 normalisation (if on) of pooled [N, D]."""
    if self.config.projection_dim is not None:
      pooled = self.projection(pooled)
    pooled = pooled.astype(jnp.float32)
    return l2_normalize(pooled) if self.config.normalize else pooled

  def log_temperature(self) -> jax.Array:
    """The learnable log-temperature, clamped to at most log(max_logit_scale): float32 []."""
    return jnp.minimum(self.raw_log_temp, math.log(self.config.max_logit_scale))

  def __call__(
      self,
      x_tokens: jax.Array,
      x_mask: jax.Array,
      y_tokens: jax.Array,
      y_mask: jax.Array,
      *,
      deterministic: bool = True,
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Embeds both sides of a batch of pairs: (x [B, d], y [B, d], log_temp [])."""
    x = self.embed(x_tokens, x_mask, side="x", deterministic=deterministic)
    y = self.embed(y_tokens, y_mask, side="y", deterministic=deterministic)
    return x, y, self.log_temperature()
