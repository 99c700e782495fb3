"""Pooling: one vector per text from the encoder's hidden states.

Pure functions of hidden [B, L, D], tokens [B, L] and mask [B, L] (1 = real
token) returning [B, D]; each is correct under left or right padding.

  eos   the paper's choice: the hidden state at the closing delimiter, found by
        token id as its last occurrence among the real tokens (the delimiter
        may also occur inside the text). A row without it falls back to its
        last real token; `check_token_present` is the host-side check that
        turns that case into an error before it reaches the model.
  last  the last real token.
  mean  the mean over real tokens (float32 accumulation).
  cls   the first real token.
  latent_attention  NV-Embed: the hidden states pass through the dual
        encoder's `LatentAttention` block (models/latent_attention.py), then
        the mean; here it pools as "mean".

Mean (and latent) pooling can leave out a prompt: `text_mask` drops each row's
first `prompt_length` real tokens (the opening delimiter and an instruction
put before the text), as sentence-transformers' `include_prompt=False` does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

POOLINGS = ("eos", "last", "mean", "cls", "latent_attention")
# Poolings that average over the tokens (and so can leave a prompt out).
MEAN_POOLINGS = ("mean", "latent_attention")


def _last_true_index(flags: jax.Array) -> jax.Array:
  """int32 [B]: index of the last True in each row of flags [B, L] (0 when none)."""
  index = jnp.arange(flags.shape[-1], dtype=jnp.int32)
  return jnp.max(jnp.where(flags, index, 0), axis=-1)


def take_positions(hidden: jax.Array, index: jax.Array) -> jax.Array:
  """hidden [B, L, D] at per-row positions index [B] -> [B, D]."""
  return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


def last_real_index(mask: jax.Array) -> jax.Array:
  """int32 [B]: position of the last real token."""
  return _last_true_index(mask.astype(bool))


def first_real_index(mask: jax.Array) -> jax.Array:
  """int32 [B]: position of the first real token (0 for an empty row)."""
  return jnp.argmax(mask.astype(bool), axis=-1).astype(jnp.int32)


def eos_index(tokens: jax.Array, mask: jax.Array, eos_id: int) -> jax.Array:
  """int32 [B]: last real occurrence of `eos_id`, else the last real token."""
  is_eos = (tokens == eos_id) & mask.astype(bool)
  return jnp.where(jnp.any(is_eos, axis=-1), _last_true_index(is_eos), last_real_index(mask))


def eos_pool(hidden: jax.Array, tokens: jax.Array, mask: jax.Array, eos_id: int) -> jax.Array:
  """[B, D]: hidden state at the last real occurrence of `eos_id` (fallback: last real token)."""
  return take_positions(hidden, eos_index(tokens, mask, eos_id))


def last_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, D]: hidden state of the last real token."""
  return take_positions(hidden, last_real_index(mask))


def cls_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, D]: hidden state of the first real token."""
  return take_positions(hidden, first_real_index(mask))


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, D]: mean of the hidden states of real tokens (zero for an empty row)."""
  weights = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
  count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)
  return (total / count).astype(hidden.dtype)


def text_mask(mask: jax.Array, prompt_length: jax.Array | None) -> jax.Array:
  """[B, L] mask of real tokens after each row's first prompt_length [B] real tokens.

  Left padding is allowed: tokens are counted from the row's first real token.
  """
  if prompt_length is None:
    return mask
  offset = jnp.cumsum(mask.astype(jnp.int32), axis=-1)  # 1 at the first real token.
  return mask * (offset > prompt_length[:, None]).astype(mask.dtype)


def packed_text_mask(segment_ids: jax.Array, text_of_token: jax.Array,
                     prompt_length: jax.Array | None) -> jax.Array | None:
  """bool [R, L]: tokens of packed rows past their text's first prompt_length [N] tokens."""
  if prompt_length is None:
    return None
  from embed_jax.models.positions import default_positions  # pylint: disable=import-outside-toplevel
  offset = default_positions(segment_ids > 0, segment_ids)
  count = jnp.append(prompt_length, 0)  # Padding's text id is N.
  return offset >= jnp.take(count, text_of_token)


def pool(
    hidden: jax.Array,
    tokens: jax.Array,
    mask: jax.Array,
    method: str,
    *,
    eos_id: int | None = None,
) -> jax.Array:
  """Pools hidden [B, L, D] to [B, D] by `method` (one of `POOLINGS`)."""
  if method == "eos":
    if eos_id is None:
      raise ValueError("eos pooling needs the id of the closing delimiter (eos_id)")
    return eos_pool(hidden, tokens, mask, eos_id)
  if method == "last":
    return last_pool(hidden, mask)
  if method in MEAN_POOLINGS:
    return mean_pool(hidden, mask)
  if method == "cls":
    return cls_pool(hidden, mask)
  raise ValueError(f"unknown pooling {method!r}; expected one of {POOLINGS}")


def pool_packed(hidden: jax.Array, pool_index: jax.Array, text_of_token: jax.Array,
                method: str, keep: jax.Array | None = None) -> jax.Array:
  """Pools packed rows (see `embed_jax.data.packing`) to one vector per text: [N, D].

  Args:
    hidden: [R, L, D] hidden states of R packed rows.
    pool_index: int [N], flat index (row * L + column) of each text's pooled
      token (eos, last, cls); unused for mean.
    text_of_token: int [R, L], the text (0..N-1) each token belongs to, N for
      padding; used for mean.
    method: one of `POOLINGS`.
    keep: optional bool [R, L]; mean pooling leaves out tokens where False
      (a prompt, see `packed_text_mask`).
  """
  flat = hidden.reshape(-1, hidden.shape[-1])
  num_texts = pool_index.shape[0]
  if method in ("eos", "last", "cls"):
    return jnp.take(flat, pool_index, axis=0)
  if method in MEAN_POOLINGS:
    owner = text_of_token if keep is None else jnp.where(keep, text_of_token, num_texts)
    owner = owner.reshape(-1)
    total = jax.ops.segment_sum(flat.astype(jnp.float32), owner, num_segments=num_texts + 1)
    count = jax.ops.segment_sum(jnp.ones_like(owner, jnp.float32), owner,
                                num_segments=num_texts + 1)
    return (total[:num_texts] / jnp.maximum(count[:num_texts, None], 1.0)).astype(hidden.dtype)
  raise ValueError(f"unknown pooling {method!r}; expected one of {POOLINGS}")


def check_token_present(tokens: np.ndarray, mask: np.ndarray, token_id: int, what: str) -> None:
  """Host-side check that every row has `token_id` among its real tokens.

  Raises:
    ValueError: naming `what` (e.g. "closing delimiter of x") and the rows without it.
  """
  tokens, mask = np.asarray(tokens), np.asarray(mask)
  present = np.any((tokens == token_id) & (mask != 0), axis=-1)
  missing = np.flatnonzero(~present)
  if missing.size:
    shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if missing.size > 10 else "")
    raise ValueError(
        f"{what} (token id {token_id}) is missing from {missing.size} of {len(present)} rows: "
        f"rows {shown} (truncated before the delimiter?)")
