"""Embedding many texts with a model: sorted by length, bucketed, sharded over the devices.

Texts are tokenised once, ordered by token count so each batch pads little,
padded to a small set of bucket lengths (so few shapes compile), split over the
mesh's batch axes, and returned in input order. Used by `embed-jax embed`,
evaluation, search and the training loop's evaluation hook.

A prompt (a task instruction) is put before each text, which is then tokenised
as one string (as sentence-transformers does); the template's prefix and the
prompt's own tokens (`prompt_token_count`) are left out of mean and latent
pooling. A model directory's stored prompts are applied by `embed_with_model`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from embed_jax import partitioning, tokenization
from embed_jax.errors import UserError
from embed_jax.models.dual_encoder import DualEncoder

_MIN_BUCKET = 16


def bucket_length(length: int, max_length: int) -> int:
  """The padded length for a batch whose longest text has `length` tokens.

  Buckets grow by about 1.25x from 16 (16, 20, 25, 32, ... rounded up to
  multiples of 8), capped at `max_length`: padding stays under ~25% while only
  a dozen or so shapes ever compile.
  """
  bucket = _MIN_BUCKET
  while bucket < length:
    bucket = -(-int(bucket * 1.25) // 8) * 8
  return min(bucket, max_length)


class PromptError(UserError):
  """A prompt that does not fit the side's max length."""


def prompt_token_count(text_encoder: tokenization.TextEncoder, side: str, prompt: str) -> int:
  """Tokens before the text's own when `prompt` is put before it: the template's prefix and
  the prompt's tokens (0 without a prompt). Mean and latent pooling leave these out."""
  if not prompt:
    return 0
  return len(text_encoder.template(side).prefix_ids) + len(
      text_encoder.tokenizer.encode_batch([prompt])[0])


def check_prompt(text_encoder: tokenization.TextEncoder, side: str, prompt: str,
                 max_length: int) -> int:
  """`prompt_token_count`, after checking that the prompt leaves room for text in max_length."""
  count = prompt_token_count(text_encoder, side, prompt)
  if prompt and count + len(text_encoder.template(side).suffix_ids) >= max_length:
    raise PromptError(
        f"the prompt of side {side} ({prompt!r}) takes {count} tokens with the template, leaving "
        f"no room for text in max_length {max_length}")
  return count


@functools.lru_cache(maxsize=16)
def _embed_fn(module: DualEncoder, side: str, mesh: Mesh | None,
              rules: partitioning.LogicalRules | None, num_layers: int | None = None) -> Callable:
  def embed(params, tokens, mask, prompt_length):
    return module.apply({"params": params}, tokens, mask, side=side, prompt_length=prompt_length,
                        num_layers=num_layers, method=DualEncoder.embed)
  if mesh is None:
    return jax.jit(embed)
  batch = partitioning.batch_sharding(mesh, 2, rules)
  rows = partitioning.batch_sharding(mesh, 1, rules)
  return jax.jit(embed, in_shardings=(None, batch, batch, rows),
                 out_shardings=batch)


def embed_texts(
    module: DualEncoder,
    params: Any,
    text_encoder: tokenization.TextEncoder,
    texts: Sequence[str],
    *,
    side: str = "x",
    batch_size: int = 64,
    max_length: int | None = None,
    mesh: Mesh | None = None,
    rules: partitioning.LogicalRules | None = None,
    progress: bool | str = False,
    prompt: str = "",
    num_layers: int | None = None,
) -> np.ndarray:
  """Embeds `texts` as side `side`: float32 [len(texts), d], rows in input order.

  Args:
    module, params: the dual encoder and its params (on `mesh` when given).
    text_encoder: tokenizer plus side templates; an empty text embeds as its
      delimiters alone.
    batch_size: texts per step; rounded up to a multiple of the mesh's batch
      shards (short final batches are padded with empty rows, then dropped).
    max_length: tokens per text, delimiters included (longer bodies are cut,
      keeping the closing delimiter); default the encoder's max_length.
    mesh: shard each batch over its batch axes; None = the default device.
    progress: show a progress bar (a string is used as its label).
    prompt: put before every text (see the module docstring); "" = none.
    num_layers: embed with the first N layers only (2D Matryoshka); None = all.
  """
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f"text {i} is {type(text).__name__}, not str")
  max_length = max_length or module.config.encoder.max_length
  max_length = min(max_length, module.config.encoder.max_length)
  module.config.check_num_layers(num_layers)
  prompt_length = check_prompt(text_encoder, side, prompt, max_length)
  ids, _ = text_encoder.encode_ids([prompt + t for t in texts] if prompt else list(texts), side,
                                   max_length)
  multiple = partitioning.batch_size_multiple(mesh, rules) if mesh is not None else 1
  batch_size = -(-max(batch_size, 1) // multiple) * multiple
  order = np.argsort([len(row) for row in ids], kind="stable")
  prompt_lengths = np.full((batch_size,), prompt_length, np.int32)
  fn = _embed_fn(module, side, mesh, rules, num_layers)
  out: np.ndarray | None = None
  starts = range(0, len(ids), batch_size)
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    label = progress if isinstance(progress, str) else f"embedding ({side})"
    starts = tqdm(starts, desc=label, unit="batch", leave=False)
  pending = []
  for start in starts:
    rows = order[start:start + batch_size]
    length = bucket_length(max(len(ids[r]) for r in rows), max_length)
    tokens = np.full((batch_size, length), text_encoder.pad_id, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    for j, r in enumerate(rows):
      tokens[j, :len(ids[r])] = ids[r]
      mask[j, :len(ids[r])] = 1
    # Dispatch is asynchronous: keep the previous batch's result on device until
    # this one is queued, so the host tokenises/pads while the device computes.
    pending.append((rows, fn(params, jnp.asarray(tokens), jnp.asarray(mask),
                             jnp.asarray(prompt_lengths))))
    if len(pending) > 1:
      out = _store(out, *pending.pop(0), len(ids))
  for rows, result in pending:
    out = _store(out, rows, result, len(ids))
  if out is None:
    dim = jax.eval_shape(
        lambda: _embed_fn(module, side, None, None)(
            params, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32),
            jnp.zeros((1,), jnp.int32))).shape[-1]
    return np.zeros((0, dim), np.float32)
  return out


def _store(out: np.ndarray | None, rows: np.ndarray, result: jax.Array, total: int) -> np.ndarray:
  values = np.asarray(jax.device_get(result))[:len(rows)]
  if out is None:
    out = np.zeros((total, values.shape[-1]), np.float32)
  out[rows] = values
  return out


def embed_with_model(model: Any, texts: Sequence[str], *, side: str = "x", **kwargs) -> np.ndarray:
  """`embed_texts` with a `model_dir.LoadedModel`'s module, params and text encoder.

  The model's prompt of `side` and its `num_layers` apply unless given.
  """
  kwargs.setdefault("prompt", model.prompts.get(side, ""))
  kwargs.setdefault("num_layers", model.num_layers)
  return embed_texts(model.module, model.params, model.text_encoder, texts, side=side, **kwargs)


def prompt_lengths_transform(text_encoder: tokenization.TextEncoder, prompts: dict[str, str],
                             lengths: dict[str, int]) -> Callable | None:
  """A host-batch transform adding `{s}_prompt_length` (int32, one per text) for s in x, y, neg.

  Training data has each side's prompt put before its texts (`data.tasks`);
  these counts let the model leave those tokens out of mean and latent pooling.
  None when no side has a prompt. lengths: side -> its max length (checked).
  """
  if not any(prompts.values()):
    return None
  counts = {side: check_prompt(text_encoder, side, prompts.get(side, ""), lengths[side])
            for side in ("x", "y")}
  counts["neg"] = counts["y"]

  def add(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch = dict(batch)
    for side, count in counts.items():
      if f"{side}_tokens" in batch:
        batch[f"{side}_prompt_length"] = np.full(batch[f"{side}_tokens"].shape[:-1], count, np.int32)
    return batch
  return add
