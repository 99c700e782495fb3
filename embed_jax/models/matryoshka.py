"""2D Matryoshka (Starbucks): one loss over (layer, dim) pairs of the same encoder.

`DualEncoderConfig.matryoshka_layers = ((2, 64), (4, 128), (6, 384))` trains the
embeddings of the first `layer` blocks, cut to their first `dim` values, jointly:
the loss is the mean over the pairs of the contrastive loss of those embeddings
(renormalised after the cut when the model normalises). The objective embeds
every listed layer in one forward pass; outputs are keyed "x", "y", "neg" for
the full model and "x@L", "y@L", "neg@L" for an earlier layer L.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

SIDES = ("x", "y", "neg")


def layers_to_embed(config) -> tuple[int, ...] | None:
  """The sorted layer counts the objective embeds (the full model's included), or None."""
  if config.matryoshka_layers is None:
    return None
  return tuple(sorted({layer for layer, _ in config.matryoshka_layers}
                      | {config.encoder.num_layers}))


def output_key(side: str, layer: int, num_layers: int) -> str:
  """The outputs key of `side`'s embeddings after `layer` blocks ("x" for the full model)."""
  return side if layer == num_layers else f"{side}@{layer}"


def name_layers(side: str, stacked: jax.Array, layers: tuple[int, ...],
                num_layers: int) -> dict[str, jax.Array]:
  """[len(layers), ...] per-layer embeddings -> {output_key: [...]}."""
  return {output_key(side, layer, num_layers): stacked[i] for i, layer in enumerate(layers)}


def cut(embeddings: jax.Array, dim: int, normalize: bool) -> jax.Array:
  """The first `dim` values of [..., d] embeddings, L2-renormalised when `normalize` (float32)."""
  out = embeddings[..., :dim].astype(jnp.float32)
  if not normalize:
    return out
  return out * jax.lax.rsqrt(jnp.maximum(jnp.sum(out * out, axis=-1, keepdims=True), 1e-24))


def loss_over_pairs(loss_of: Callable, outputs: Mapping[str, jax.Array], config
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean over `config.matryoshka_layers` of loss_of(x, y, negatives) for each (layer, dim).

  loss_of returns (loss, metrics); the metrics are those of the first pair,
  plus `loss_layer{L}_dim{D}` for each pair.
  """
  num_layers = config.encoder.num_layers
  losses, metrics = [], {}
  for layer, dim in config.matryoshka_layers:
    parts = [outputs.get(output_key(side, layer, num_layers)) for side in SIDES]
    x, y, negatives = (None if p is None else cut(p, dim, config.normalize) for p in parts)
    loss, pair_metrics = loss_of(x, y, negatives)
    if not metrics:
      metrics = dict(pair_metrics)
    metrics[f"loss_layer{layer}_dim{dim}"] = loss
    losses.append(loss)
  total = jnp.mean(jnp.stack(losses))
  metrics["loss"] = total
  return total, metrics
