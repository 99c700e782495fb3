"""The dual encoder: ONE shared Transformer embeds both sides of a pair.

As in the paper, x and y texts pass through the same encoder; each side is
wrapped in its own delimiters (x: "[" ... "]", y: "{" ... "}", already in the
tokens) and, with eos pooling, pooled at its closing delimiter. An optional
linear projection and L2 normalisation follow. A learnable scalar
log-temperature scales the logits in the loss; its returned value is clamped
so that exp(log_temp) <= max_logit_scale.

Param tree (`params` collection):
  encoder/...                 the encoder's tree (see transformer.py, bert.py)
  latent_pool/...             pooling="latent_attention" only (latent_attention.py)
  projection/kernel [D, P]    ("embed", None); only with projection_dim
  log_temp []                 scalar, unclamped

2D Matryoshka (Starbucks): `matryoshka_layers` lists (layer, dim) pairs; the
embedding of a pair is the output of the first `layer` blocks (a decoder's
through its final norm) pooled, projected and normalised as the full model's,
cut to its first `dim` values (the loss renormalises). `embed(num_layers=N)`
runs only the first N blocks.
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

from embed_jax.errors import ConfigError
from embed_jax.models import latent_attention, layers, pooling
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
      "mean", "cls" or "latent_attention" (NV-Embed: a cross-attention block
      over trainable latents and an MLP, then the mean).
    latent_attention_latents: latent_attention: number of trainable latents.
    latent_attention_heads: latent_attention: heads (must divide d_model).
    x_delimiter_ids: (open_id, close_id) of the x side's delimiters in the
      vocabulary; eos pooling needs them (the vocabulary side knows them).
    y_delimiter_ids: the same for the y side.
    projection_dim: size of a linear projection after pooling; None = none.
    normalize: L2-normalise the embeddings.
    log_temp_init: initial log-temperature (log of the logit scale).
    max_logit_scale: upper bound of exp(log_temp).
    matryoshka_layers: 2D Matryoshka (layer, dim) pairs trained jointly (see
      the module docstring); None = the full model only.
  """
  encoder: EncoderConfig
  pooling: str = "eos"
  x_delimiter_ids: tuple[int, int] | None = None
  y_delimiter_ids: tuple[int, int] | None = None
  projection_dim: int | None = None
  normalize: bool = True
  log_temp_init: float = math.log(1 / 0.07)
  max_logit_scale: float = 100.0
  latent_attention_latents: int = 512
  latent_attention_heads: int = 8
  matryoshka_layers: tuple[tuple[int, int], ...] | None = None

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
    if self.pooling == "latent_attention":
      latent_attention.check_settings(self.encoder.d_model, self.latent_attention_latents,
                                      self.latent_attention_heads)
    if self.matryoshka_layers is not None:
      object.__setattr__(self, "matryoshka_layers", self._checked_pairs(self.matryoshka_layers))

  @property
  def output_dim(self) -> int:
    """Size of the embeddings: projection_dim, else the encoder's d_model."""
    return self.encoder.d_model if self.projection_dim is None else self.projection_dim

  def _checked_pairs(self, pairs) -> tuple[tuple[int, int], ...]:
    checked = []
    for pair in pairs:
      if len(pair) != 2:
        raise ConfigError(f"DualEncoderConfig.matryoshka_layers: {pair!r} is not a (layer, dim) pair")
      layer, dim = int(pair[0]), int(pair[1])
      if not 1 <= layer <= self.encoder.num_layers or not 1 <= dim <= self.output_dim:
        raise ConfigError(
            f"DualEncoderConfig.matryoshka_layers: ({layer}, {dim}) is beyond the model "
            f"(layers 1..{self.encoder.num_layers}, dims 1..{self.output_dim})")
      checked.append((layer, dim))
    if not checked:
      raise ConfigError("DualEncoderConfig.matryoshka_layers is empty; use None for none")
    return tuple(checked)

  def check_num_layers(self, num_layers: int | None) -> None:
    """Raises a ConfigError unless num_layers is None or in 1..encoder.num_layers."""
    if num_layers is not None and not 1 <= num_layers <= self.encoder.num_layers:
      raise ConfigError(f"--layers {num_layers}: the model has layers 1..{self.encoder.num_layers}")

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
    if cfg.pooling == "latent_attention":
      self.latent_pool = latent_attention.LatentAttention(
          num_latents=cfg.latent_attention_latents, num_heads=cfg.latent_attention_heads,
          init_std=cfg.encoder.init_std, dtype=jnp.dtype(cfg.encoder.dtype),
          param_dtype=jnp.dtype(cfg.encoder.param_dtype), name="latent_pool")
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
      prompt_length: jax.Array | None = None,
      num_layers: int | None = None,
  ) -> jax.Array:
    """Embeds one side: tokens, mask [B, L] (delimiters included) -> float32 [B, d].

    d is projection_dim, or the encoder's d_model without a projection; rows
    have unit L2 norm when `normalize`.

    prompt_length: optional int [B]; mean and latent pooling leave out each
      row's first prompt_length real tokens (opening delimiter and instruction).
    num_layers: run only the first N blocks (None: all).
    """
    self.config.check_num_layers(num_layers)
    if num_layers is not None:
      return self.embed_layers(tokens, mask, side=side, layers_out=(num_layers,),
                               positions=positions, deterministic=deterministic,
                               prompt_length=prompt_length)[0]
    hidden = self.encoder(tokens, mask, positions=positions, deterministic=deterministic)
    return self._embed_hidden(hidden, tokens, mask, side, prompt_length)

  def embed_layers(
      self,
      tokens: jax.Array,
      mask: jax.Array,
      *,
      side: str = "x",
      layers_out: tuple[int, ...],
      positions: jax.Array | None = None,
      deterministic: bool = True,
      prompt_length: jax.Array | None = None,
  ) -> jax.Array:
    """`embed` after the first n blocks for each n in layers_out: float32 [len(layers_out), B, d]."""
    hidden = self.encoder(tokens, mask, positions=positions, deterministic=deterministic,
                          layers_out=tuple(layers_out))
    return jnp.stack([self._embed_hidden(h, tokens, mask, side, prompt_length) for h in hidden])

  def _embed_hidden(self, hidden, tokens, mask, side, prompt_length) -> jax.Array:
    """Pooling, projection and normalisation of hidden [B, L, D] -> float32 [B, d]."""
    cfg = self.config
    layers.check_choice("side", side, SIDES)
    eos_id = cfg.closing_id(side) if cfg.pooling == "eos" else None
    if cfg.pooling == "latent_attention":
      hidden = self.latent_pool(hidden)
    if cfg.pooling in pooling.MEAN_POOLINGS:
      mask = pooling.text_mask(mask, prompt_length)
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
      prompt_length: jax.Array | None = None,
      layers_out: tuple[int, ...] | None = None,
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
    prompt_length: optional int [N], as in `embed` (per text, in text order).
    layers_out: as in `embed_layers`; then float32 [len(layers_out), N, d].
    """
    rows, length = tokens.shape
    if rows % groups or pool_index.shape[0] % groups:
      raise ValueError(f"{rows} rows and {pool_index.shape[0]} texts do not split into "
                       f"{groups} groups")
    hidden = self.encoder(tokens, segment_ids > 0, segment_ids=segment_ids,
                          deterministic=deterministic,
                          layers_out=None if layers_out is None else tuple(layers_out))
    local_text = text_of_token.reshape(groups, rows // groups, length)
    keep = None
    if prompt_length is not None and self.config.pooling in pooling.MEAN_POOLINGS:
      keep = jax.vmap(pooling.packed_text_mask)(
          segment_ids.reshape(groups, rows // groups, length), local_text,
          prompt_length.reshape(groups, -1))

    def pool_all(h):
      if self.config.pooling == "latent_attention":
        h = self.latent_pool(h)
      h = layers.constrain(h.reshape(groups, rows // groups, length, -1),
                           ("batch", None, "length", "embed"))
      pool = functools.partial(pooling.pool_packed, method=self.config.pooling)
      if keep is None:
        pooled = jax.vmap(pool)(h, pool_index.reshape(groups, -1), local_text)
      else:
        pooled = jax.vmap(pool)(h, pool_index.reshape(groups, -1), local_text, keep=keep)
      pooled = layers.constrain(pooled, ("batch", None, "embed"))
      return self._finish(pooled.reshape(pool_index.shape[0], -1))
    if layers_out is None:
      return pool_all(hidden)
    return jnp.stack([pool_all(h) for h in hidden])

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
