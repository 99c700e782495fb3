"""Model FLOPs of a contrastive train step, counted analytically (the MFU numerator).

A training step costs 3x its forward pass (forward, and a backward of twice
the forward). The forward counts, per token, 2 FLOPs for every weight of a
matrix outside the embedding tables (a multiply and an add), plus attention's
two [L, L] products, 2 * 2 * L * (heads * head_dim) per layer (per row: a packed row
of several texts costs what one text of length L costs); and the loss's
similarity matrices, 2 * B * C * d for x against its C = B * (1 + H)
candidates and 2 * B * B * d for y against x. GradCache's recomputation and rematerialisation are not model
FLOPs and are not counted; XLA's `cost_analysis()` counts them, and the
elementwise work too, so the two agree only loosely.

`train_step_flops` counts the rows the step computes (padding included);
`real_train_step_flops` counts only the real tokens of each text, the MFU
numerator.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from embed_jax.models.dual_encoder import DualEncoderConfig

MATRIX_NAMES = ("kernel",)  # Embedding tables are `embedding` (lookups, not products).


@dataclasses.dataclass(frozen=True)
class StepShape:
  """What one train step processes: the global batch, its row lengths and rows per side.

  x_rows, y_rows, neg_rows: rows through the encoder per side; None = one text
  a row (batch_size, batch_size, batch_size * num_negatives). Packed batches
  hold several texts a row, so fewer.
  """
  batch_size: int
  x_length: int
  y_length: int
  num_negatives: int = 0
  x_rows: int | None = None
  y_rows: int | None = None
  neg_rows: int | None = None

  @classmethod
  def of_batch(cls, batch: Any) -> StepShape:
    """The shape of a padded or packed batch (arrays or ShapeDtypeStructs, global shapes)."""
    if "x_pool_index" in batch:  # Packed (`data.packed_batches`).
      b = batch["x_pool_index"].shape[0]
      negatives = batch["neg_pool_index"].shape[1] if "neg_pool_index" in batch else 0
      x_rows, x_length = batch["x_packed_tokens"].shape
      y_rows, y_length = batch["y_packed_tokens"].shape
      neg_rows = batch["neg_packed_tokens"].shape[0] if negatives else 0
      return cls(b, x_length, y_length, negatives, x_rows, y_rows, neg_rows)
    b, x_length = batch["x_tokens"].shape
    negatives = batch["neg_tokens"].shape[1] if "neg_tokens" in batch else 0
    return cls(b, x_length, batch["y_tokens"].shape[1], negatives)

  @property
  def rows(self) -> tuple[int, int]:
    """(x rows, y and negative rows) through the encoder."""
    x = self.batch_size if self.x_rows is None else self.x_rows
    y = self.batch_size if self.y_rows is None else self.y_rows
    neg = self.batch_size * self.num_negatives if self.neg_rows is None else self.neg_rows
    return x, y + neg

  @property
  def tokens(self) -> int:
    """Tokens through the encoder per step (padding included: it is computed)."""
    x_rows, y_rows = self.rows
    return x_rows * self.x_length + y_rows * self.y_length


def matmul_params(params: Any) -> int:
  """Weights of every matrix product (leaves named `kernel`); params or abstract params."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
    if name in MATRIX_NAMES:
      total += math.prod(leaf.shape)
  return total


def attention_width(config: DualEncoderConfig) -> int:
  """heads * head_dim of the encoder (the width of the attention products)."""
  encoder = config.encoder
  head_dim = getattr(encoder, "head_dim", None) or encoder.d_model // encoder.num_heads
  return encoder.num_heads * head_dim


def _forward(config: DualEncoderConfig, params: Any, tokens: int, squared_lengths: int,
             batch_size: int, num_negatives: int) -> float:
  """Forward FLOPs given the tokens through the encoder and the sum of each text's length**2."""
  dense = 2 * matmul_params(params) * tokens
  attention = 2 * 2 * config.encoder.num_layers * attention_width(config) * squared_lengths
  candidates = batch_size * (1 + num_negatives)
  loss = 2 * batch_size * (candidates + batch_size) * config.output_dim
  return float(dense + attention + loss)


def forward_flops(config: DualEncoderConfig, params: Any, shape: StepShape) -> float:
  """FLOPs of the forward pass of one global batch: encoder matrices, attention, the loss."""
  x_rows, y_rows = shape.rows
  squared = x_rows * shape.x_length ** 2 + y_rows * shape.y_length ** 2
  return _forward(config, params, shape.tokens, squared, shape.batch_size, shape.num_negatives)


def train_step_flops(config: DualEncoderConfig, params: Any, shape: StepShape) -> float:
  """Model FLOPs of one train step: 3x the forward (forward + backward)."""
  return 3.0 * forward_flops(config, params, shape)


def real_train_step_flops(config: DualEncoderConfig, params: Any, x_lengths: Any,
                          y_lengths: Any, neg_lengths: Any = None) -> float:
  """Model FLOPs of one train step counting only real (non-padding) tokens.

  Args:
    x_lengths, y_lengths: int [B], each text's real tokens (delimiters included).
    neg_lengths: optional int [B, H] for hard negatives.
  The MFU numerator: the work the batch needs, whatever padding or packing
  the step computes besides.
  """
  lengths = [np.asarray(x_lengths).ravel(), np.asarray(y_lengths).ravel()]
  num_negatives = 0
  if neg_lengths is not None:
    neg = np.asarray(neg_lengths)
    num_negatives = neg.shape[1]
    lengths.append(neg.ravel())
  every = np.concatenate(lengths).astype(np.int64)
  forward = _forward(config, params, int(every.sum()), int((every ** 2).sum()),
                     len(lengths[0]), num_negatives)
  return 3.0 * forward
