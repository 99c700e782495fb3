"""The objective: the dual encoder and the contrastive loss it is trained with.

An objective answers three questions, each a pure function of arrays:

  embed(params, part, rng, frozen)  the differentiable embeddings of one part of
                                    a batch: {"x": [b, d], "y": [b, d],
                                    "neg": [b, H, d] when the batch has negatives}
  guide_embed(frozen, part)         forward-only targets of that part (a frozen
                                    guide model's embeddings), {} without a guide
  loss(outputs, log_temp, batch)    the loss over the WHOLE global batch of
                                    outputs (embeddings and targets) and its metrics

`log_temp(params, frozen)` is the one differentiable quantity shared by the
whole batch. The updater (`train.updater`) turns any objective into gradients,
directly or by GradCache, so a new loss term is an objective option: GradCache,
packing and the mesh never need to know which terms exist.

`frozen` holds params that are read but never trained (a guide model, LoRA's
base weights); `params_view(params, frozen)` gives the encoder's params.

A part is padded (x_tokens, x_mask [b, Lx], ...) or packed (the
`data.packed_batches` keys, K*Rg rows of each side, pool_index [b] / [b, H]);
either way the b rows come out in the part's row order. Chunk c embeds with
dropout key fold_in(rng, side), so the dropout masks of a part depend only on
its key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import gin
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from embed_jax import partitioning
from embed_jax.data import packed_batches
from embed_jax.errors import ConfigError
from embed_jax.losses import check_options, contrastive_loss
from embed_jax.models import matryoshka
from embed_jax.models.dual_encoder import DualEncoder

Batch = Mapping[str, jax.Array]
SIDE_KEYS = {"x": 0, "y": 1, "neg": 2}
ENCODER_INPUT_SUFFIXES = ("_tokens", "_mask", "_segment_ids", "_text_of_token", "_pool_index",
                          "_prompt_length")
GUIDE_KEYS = {"x": "guide_x", "y": "guide_y", "neg": "guide_neg"}


@dataclasses.dataclass(frozen=True)
class GuideModel:
  """A frozen model whose embeddings guide the loss (GISTEmbed): its module and where it came from.

  Its params live in the step's `frozen["guide"]` (sharded like any params).
  """
  module: DualEncoder
  source: str


def hard_negative_mask(batch: Batch) -> jax.Array | None:
  """bool [B, H]: True where the batch holds a real hard negative (None without negatives).

  A padded batch marks a missing negative by an all-zero `neg_mask` row; a
  packed one carries `neg_valid` (packing keeps a placeholder in its place).
  """
  if "neg_valid" in batch:
    return batch["neg_valid"].astype(bool)
  if "neg_mask" in batch:
    return jnp.any(batch["neg_mask"] > 0, axis=-1)
  return None


@gin.configurable
class ContrastiveObjective:
  """The symmetric in-batch InfoNCE of cpt-text and the loss terms today's embedders add.

  Args:
    module: the dual encoder.
    mesh, rules: where the batch and params live.
    loss_impl: `contrastive_loss` impl: "gather", "ring" or "reference".
    tile_size: the ring's logit tile.
    mask_duplicates: pairs with the same y text are not negatives (the batch's `y_ids`).
    dropout: embed with the model's dropout rates (False: deterministic).
    matryoshka_dims, matryoshka_weights, directions, partition, guide_margin,
      guide_margin_kind, false_negative_margin, distill, distill_weight,
      distill_temperature, distill_student_temperature: the `contrastive_loss`
      options of the same names (None: that function's default); see its
      docstring for what each computes.
    guide: a frozen guide model (its params in `frozen["guide"]`), or None.
    params_view: (params, frozen) -> the encoder's params (e.g. LoRA's merge);
      None: params as they are.
  """

  def __init__(self, module: DualEncoder, mesh: Mesh | None,
               rules: partitioning.LogicalRules | None = None, *,
               loss_impl: str = "gather", tile_size: int = 1024, mask_duplicates: bool = True,
               dropout: bool = True,
               matryoshka_dims: tuple[int, ...] | None = None,
               matryoshka_weights: tuple[float, ...] | None = None,
               directions: tuple[str, ...] | None = None,
               partition: str | None = None,
               guide_margin: float | None = None,
               guide_margin_kind: str | None = None,
               false_negative_margin: float | None = None,
               distill: str | None = None,
               distill_weight: float | None = None,
               distill_temperature: float | None = None,
               distill_student_temperature: float | None = None,
               guide: GuideModel | None = None,
               params_view: Callable[[Any, Any], Any] | None = None):
    self.module, self.mesh, self.rules = module, mesh, rules
    self.loss_impl, self.tile_size = loss_impl, tile_size
    self.mask_duplicates, self.dropout = mask_duplicates, dropout
    options = dict(
        matryoshka_dims=matryoshka_dims, matryoshka_weights=matryoshka_weights,
        directions=directions, partition=partition, guide_margin=guide_margin,
        guide_margin_kind=guide_margin_kind, false_negative_margin=false_negative_margin,
        distill=distill, distill_weight=distill_weight, distill_temperature=distill_temperature,
        distill_student_temperature=distill_student_temperature)
    self.loss_options = {k: _as_tuple(v) for k, v in options.items() if v is not None}
    check_options(dim=module.config.output_dim, where="ContrastiveObjective", **self.loss_options)
    # (guide_margin_kind may be set without a guide: it is also false_negative_margin's kind.)
    if guide is None and "guide_margin" in self.loss_options:
      raise ConfigError("ContrastiveObjective.guide_margin is set but there is no guide "
                        "model; set train.guide_model (or false_negative_margin to mask by the "
                        "model's own scores)")
    self.guide = guide
    self.params_view = params_view
    self.num_shards = partitioning.batch_size_multiple(mesh, rules) if mesh is not None else 1

  def replace(self, **changes) -> ContrastiveObjective:
    """A copy with some constructor arguments changed (e.g. dropout=False for evaluation)."""
    args = dict(module=self.module, mesh=self.mesh, rules=self.rules, loss_impl=self.loss_impl,
                tile_size=self.tile_size, mask_duplicates=self.mask_duplicates,
                dropout=self.dropout, guide=self.guide, params_view=self.params_view,
                **self.loss_options)
    args.update(changes)
    return type(self)(**args)

  # ---- what the updater chunks ----

  @staticmethod
  def inputs(batch: Batch) -> dict[str, jax.Array]:
    """The encoder's inputs of a padded or packed batch (each chunks along its leading dim)."""
    return {k: v for k, v in batch.items() if k.endswith(ENCODER_INPUT_SUFFIXES)}

  # ---- the model ----

  def encoder_params(self, params: Any, frozen: Any = None) -> Any:
    """The dual encoder's params from the trained and the frozen ones."""
    return params if self.params_view is None else self.params_view(params, frozen)

  def _embed_with(self, module: DualEncoder, params: Any, part: Batch, rng: jax.Array | None,
                  deterministic: bool) -> dict[str, jax.Array]:
    packed = packed_batches.is_packed(part)

    layers_out = matryoshka.layers_to_embed(module.config)

    def embed(key, side):
      rngs = None if rng is None else {"dropout": jax.random.fold_in(rng, SIDE_KEYS[key])}
      prompt_length = part.get(f"{key}_prompt_length")
      if prompt_length is not None:
        prompt_length = prompt_length.reshape(-1)
      if packed:
        pool_index = part[f"{key}_pool_index"]
        out = module.apply(
            {"params": params}, part[f"{key}_packed_tokens"], part[f"{key}_segment_ids"],
            part[f"{key}_text_of_token"], pool_index.reshape(-1), groups=self.num_shards,
            deterministic=deterministic, rngs=rngs, prompt_length=prompt_length,
            layers_out=layers_out, method=DualEncoder.embed_packed)
        shape = pool_index.shape
      else:
        tokens, mask = part[f"{key}_tokens"], part[f"{key}_mask"]
        by_layer = {} if layers_out is None else {"layers_out": layers_out}
        out = module.apply(
            {"params": params}, tokens.reshape(-1, tokens.shape[-1]),
            mask.reshape(-1, mask.shape[-1]), side=side, deterministic=deterministic, rngs=rngs,
            prompt_length=prompt_length,
            method=DualEncoder.embed if layers_out is None else DualEncoder.embed_layers,
            **by_layer)
        shape = tokens.shape[:-1]
      if layers_out is None:
        return {key: out.reshape(*shape, -1)}
      return matryoshka.name_layers(key, out.reshape(len(layers_out), *shape, -1), layers_out,
                                    module.config.encoder.num_layers)
    out = {**embed("x", "x"), **embed("y", "y")}
    if f"neg_{'pool_index' if packed else 'tokens'}" in part:
      out.update(embed("neg", "y"))
    return out

  def embed(self, params: Any, part: Batch, rng: jax.Array, frozen: Any = None
            ) -> dict[str, jax.Array]:
    """Embeds one part of a batch: {"x": [b, d], "y": [b, d], "neg": [b, H, d]} (float32)."""
    return self._embed_with(self.module, self.encoder_params(params, frozen), part, rng,
                            deterministic=not self.dropout)

  def guide_embed(self, frozen: Any, part: Batch) -> dict[str, jax.Array]:
    """The guide's embeddings of one part, {"guide_x", "guide_y"[, "guide_neg"]}; no gradient."""
    if self.guide is None:
      return {}
    out = self._embed_with(self.guide.module, frozen["guide"], part, None, deterministic=True)
    return {GUIDE_KEYS[k]: jax.lax.stop_gradient(v) for k, v in out.items()}

  def log_temp(self, params: Any, frozen: Any = None) -> jax.Array:
    """The learned log logit scale: float32 []."""
    return self.module.apply({"params": self.encoder_params(params, frozen)},
                             method=DualEncoder.log_temperature)

  # ---- the loss ----

  def loss(self, outputs: Mapping[str, jax.Array], log_temp: jax.Array,
           batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss over the whole global batch: `contrastive_loss` of the embeddings and targets."""
    options = dict(self.loss_options)
    negatives = outputs.get("neg")
    if negatives is not None:
      valid = hard_negative_mask(batch)
      if valid is not None:
        options["hard_negative_mask"] = valid
    if "guide_x" in outputs:
      guide = (outputs["guide_x"], outputs["guide_y"])
      if negatives is not None and "guide_neg" in outputs:
        guide += (outputs["guide_neg"],)
      options["guide"] = guide
    if "distill" in options:
      if "teacher_scores" not in batch:
        raise ConfigError(f"ContrastiveObjective.distill={options['distill']!r} needs a "
                          "'teacher_scores' field [B, 1+H] in the batch (the data has none)")
      options["teacher_scores"] = batch["teacher_scores"]
    ids = batch.get("y_ids") if self.mask_duplicates else None

    def loss_of(x, y, negatives):
      return contrastive_loss(
          x, y, log_temp, mesh=self.mesh, impl=self.loss_impl, hard_negatives=negatives,
          mask_duplicates=ids, tile_size=self.tile_size, rules=self.rules, **options)
    if self.module.config.matryoshka_layers is None:
      return loss_of(outputs["x"], outputs["y"], negatives)
    return matryoshka.loss_over_pairs(loss_of, outputs, self.module.config)

  def evaluate_batch(self, params: Any, batch: Batch, frozen: Any = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of a global batch without dropout or chunking (validation)."""
    part = self.inputs(batch)
    embeddings = self._embed_with(self.module, self.encoder_params(params, frozen), part, None,
                                  deterministic=True)
    outputs = {**embeddings, **self.guide_embed(frozen, part)}
    return self.loss(outputs, self.log_temp(params, frozen), batch)


def _as_tuple(value):
  """Lists (from gin or JSON) as tuples, so options stay hashable and compare equal."""
  return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value
