"""seqio preprocessors of pair tasks."""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

TOKENIZE_BATCH = 512


def prepend_prompts(dataset: tf.data.Dataset, prompts: Mapping[str, str]) -> tf.data.Dataset:
  """Puts each side's prompt (an instruction) before its strings: x, y, and negatives (y's).

  prompts: {"x": ..., "y": ...}; a missing or empty one leaves that side as it is.
  """
  columns = {"x": prompts.get("x", ""), "y": prompts.get("y", ""), "negatives": prompts.get("y", "")}

  def prepend(example):
    return {k: tf.strings.join([columns[k], v]) if columns.get(k) else v for k, v in example.items()}
  return dataset.map(prepend, num_parallel_calls=tf.data.AUTOTUNE)


def tokenize_pairs(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                   batch_size: int = TOKENIZE_BATCH) -> tf.data.Dataset:
  """Encodes every string feature named in `output_features` with its vocabulary.

  Like `seqio.preprocessors.tokenize`, but in batches of `batch_size` texts (one
  Python tokenizer call each, not one per text), which is many times faster for
  tokenizers called through `tf.numpy_function`. Order and other features are kept.

  Input: `x`, `y` string scalars, `negatives` a string vector. Output: `x`, `y`
  int32 [L], `negatives` int32 ragged [H, None]; delimiters included.
  """
  names = [k for k, spec in dataset.element_spec.items()
           if k in output_features and spec.dtype == tf.string]

  def encode(batch):
    return {k: output_features[k].vocabulary.encode_tf(v) if k in names else v
            for k, v in batch.items()}

  return dataset.ragged_batch(batch_size).map(encode).unbatch()


def truncate_keeping_suffix(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None = None,
                            output_features: Mapping[str, seqio.Feature] | None = None) -> tf.data.Dataset:
  """Cuts x, y and each negative to `sequence_length`, keeping each closing delimiter.

  A no-op without `sequence_length` (the embed_jax pipeline passes none and
  truncates in the feature converter, which also counts what it cut). With one,
  as `seqio.get_dataset(...)` passes, this runs before seqio's own trimming,
  which cuts from the end and would drop the closing delimiter: afterwards that
  trimming has nothing left to cut. Negatives use the length of `y`.
  """
  if not sequence_length:
    return dataset
  from embed_jax.data.feature_converter import fit_rows  # pylint: disable=import-outside-toplevel
  lengths = {"x": sequence_length.get("x"), "y": sequence_length.get("y"),
             "negatives": sequence_length.get("y")}

  def fit(rows: tf.RaggedTensor, side: str, length: int) -> tf.RaggedTensor:
    vocabulary = output_features[side].vocabulary
    tokens, mask, _ = fit_rows(rows, length, len(vocabulary.template.suffix_ids), vocabulary.pad_id)
    return tf.RaggedTensor.from_tensor(tokens, lengths=tf.reduce_sum(mask, axis=1))

  def cut(example):
    out = dict(example)
    for name, length in lengths.items():
      if name not in example or length is None:
        continue
      side = "y" if name == "negatives" else name
      if name == "negatives":  # [H, None] ragged.
        out[name] = fit(example[name], side, length)
      else:
        out[name] = fit(tf.RaggedTensor.from_tensor(example[name][tf.newaxis]), side, length)[0]
    return out

  return dataset.map(cut, num_parallel_calls=tf.data.AUTOTUNE)
