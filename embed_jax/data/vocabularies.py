"""seqio Vocabularies over `embed_jax.tokenization`: one side of a pair each.

A `TemplateVocabulary` encodes a text as its side's template wraps it:
`prefix_ids + body + suffix_ids` (delimiters included, nothing truncated; the
feature converter truncates the body). Its tensorflow encoding calls the same
Python tokenizer through `tf.numpy_function`, batched, so training and
`embed-jax embed` produce identical ids.

  TokenizerJsonVocabulary        a `tokenizers` tokenizer.json (converted checkpoints)
  SentencePieceTemplateVocabulary  a SentencePiece model (`embed-jax data train-vocab`)
  ConfiguredVocabulary           whatever gin's `text_encoder` says, looked up at use;
                                 the registered tasks use it, so one gin line picks
                                 the vocabulary of every task.

seqio's EOS is not used (`eos_id` is None): the closing delimiter is part of
the template, and a bracket inside the text must not end decoding.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import seqio
import tensorflow as tf

from embed_jax import tokenization


class TemplateVocabulary(seqio.Vocabulary):
  """One side ("x" or "y") of a TextEncoder, as a seqio Vocabulary.

  Args:
    encoder: the TextEncoder, or a function returning it (looked up at each use).
    side: "x" or "y".
  """

  def __init__(self, encoder: tokenization.TextEncoder | Callable[[], tokenization.TextEncoder], side: str):
    if side not in tokenization.SIDES:
      raise ValueError(f"side must be one of {tokenization.SIDES}, got {side!r}")
    self._encoder = encoder
    self.side = side
    super().__init__(extra_ids=0)

  @property
  def encoder(self) -> tokenization.TextEncoder:
    return self._encoder() if callable(self._encoder) else self._encoder

  @property
  def template(self) -> tokenization.SideTemplate:
    return self.encoder.template(self.side)

  @property
  def eos_id(self) -> int | None:
    return None

  @property
  def unk_id(self) -> int | None:
    return None

  @property
  def pad_id(self) -> int:
    return self.encoder.pad_id

  @property
  def _base_vocab_size(self) -> int:
    return self.encoder.vocab_size

  def _encode(self, s: str) -> Sequence[int]:
    return self.encoder.encode_ids([s], self.side)[0][0]

  def _decode(self, ids: Sequence[int]) -> str:
    return self.encoder.decode(ids)

  def _encode_tf(self, s: tf.Tensor | tf.RaggedTensor) -> tf.Tensor | tf.RaggedTensor:
    """Ids of a string scalar ([L] int32), vector ([N, None] ragged) or ragged tensor (one more ragged dim)."""
    if isinstance(s, tf.RaggedTensor):
      return s.with_flat_values(self._encode_tf(s.flat_values))
    if s.shape.rank not in (0, 1):
      raise ValueError(f"encode_tf takes a string scalar, vector or ragged tensor; got shape {s.shape}")
    encoder, side = self.encoder, self.side

    def encode(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
      rows, _ = encoder.encode_ids([t.decode("utf-8") for t in texts], side)
      lengths = np.fromiter((len(r) for r in rows), np.int64, count=len(rows))
      ids = np.fromiter(itertools.chain.from_iterable(rows), np.int32, count=int(lengths.sum()))
      return ids, lengths

    ids, lengths = tf.numpy_function(encode, [tf.reshape(s, [-1])], [tf.int32, tf.int64], stateful=False)
    ids.set_shape([None])
    lengths.set_shape([None])
    ragged = tf.RaggedTensor.from_row_lengths(ids, lengths, validate=False)
    return ragged[0] if s.shape.rank == 0 else ragged

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """Text of [L] ids (a string scalar) or of [N, L] ids (a string vector)."""
    decode = self.encoder.decode

    def decode_rows(rows: np.ndarray) -> np.ndarray:
      return np.array([decode(r.tolist()).encode("utf-8") for r in np.atleast_2d(rows)], dtype=object)

    texts = tf.numpy_function(decode_rows, [ids], tf.string, stateful=False)
    return tf.reshape(texts, []) if ids.shape.rank == 1 else texts

  def __eq__(self, other) -> bool:
    return (isinstance(other, TemplateVocabulary) and self.side == other.side
            and self.encoder.describe() == other.encoder.describe())

  def __hash__(self) -> int:
    return hash((self.side, self.encoder.describe()))

  def __repr__(self) -> str:
    return f"{type(self).__name__}(side={self.side!r}, {self.encoder.describe()})"


class TokenizerJsonVocabulary(TemplateVocabulary):
  """A side of a `tokenizers` tokenizer.json with per-side templates (default `[ ]` / `{ }`)."""

  def __init__(self, path: str, side: str,
               template_tokens: dict[str, tuple[Sequence[str], Sequence[str]]] | None = None):
    super().__init__(tokenization.TextEncoder(tokenization.HuggingFaceTokenizer(path), template_tokens), side)


class SentencePieceTemplateVocabulary(TemplateVocabulary):
  """A side of a SentencePiece model with per-side templates (default `[ ]` / `{ }`)."""

  def __init__(self, path: str, side: str,
               template_tokens: dict[str, tuple[Sequence[str], Sequence[str]]] | None = None):
    super().__init__(tokenization.TextEncoder(tokenization.SentencePieceTokenizer(path), template_tokens), side)


class ConfiguredVocabulary(TemplateVocabulary):
  """A side of the TextEncoder that gin's `text_encoder` configures, looked up at each use."""

  def __init__(self, side: str):
    super().__init__(lambda: tokenization.text_encoder(), side)  # pylint: disable=unnecessary-lambda

  def __repr__(self) -> str:
    return f"ConfiguredVocabulary(side={self.side!r})"
