"""Task features (delimited token ids of any length) -> fixed-length model features.

A text longer than its length loses the end of its BODY: the first
`length - suffix_length` ids are kept (the opening delimiter and the start of
the body) and the last `suffix_length` ids (the closing delimiter) are put back
at the end, so the pooled position survives truncation. This is exactly
`tokenization.SideTemplate.apply` with `max_length=length`.

Model features (per example; batched by the pipeline):
  x_tokens, x_mask      int32 [Lx]      right-padded; mask 1 = real token
  y_tokens, y_mask      int32 [Ly]
  neg_tokens, neg_mask  int32 [H, Ly]   the first H negatives; missing ones all-padding
  x_truncated, y_truncated  int32 []    1 where the body was cut
  neg_truncated         int32 []        how many of the kept negatives were cut
  teacher_scores        float32 [1+H]   only with `teacher_scores`: the positive's and the
                                        kept negatives' scores; 0 for a missing negative
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

_Spec = seqio.FeatureConverter.FeatureSpec
CONVERT_BATCH = 256


def fit_rows(rows: tf.RaggedTensor, length: int, keep_last: int, pad_id: int
             ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Cuts each row to at most `length` ids, keeping its last `keep_last` ids, and pads.

  Args:
    rows: int32 ragged [R, None].
    length: the fixed output length.
    keep_last: how many ids at the end of a row always survive (the suffix).
    pad_id: id put after the real ids.

  Returns:
    tokens int32 [R, length], mask int32 [R, length], truncated bool [R].
  """
  n = rows.row_lengths()
  cut = n > length
  kept = tf.minimum(n, length)
  head = tf.where(cut, tf.cast(length - keep_last, n.dtype), n)
  # Output position j of a row takes input position j from the head, then the
  # last `keep_last` ids. Flat index arithmetic: cheap to trace, unlike ragged gathers.
  positions = tf.ragged.range(kept)
  j, row = positions.flat_values, positions.value_rowids()
  row_head, row_n, row_start = (tf.gather(v, row) for v in (head, n, rows.row_starts()))
  tail_start = row_n - (tf.minimum(row_n, length) - row_head)
  source = row_start + tf.where(j < row_head, j, tail_start + j - row_head)
  fitted = tf.RaggedTensor.from_row_lengths(tf.gather(rows.flat_values, source), kept, validate=False)
  tokens = fitted.to_tensor(default_value=pad_id, shape=[None, length])
  mask = tf.sequence_mask(kept, length, dtype=tf.int32)
  return tokens, mask, cut


class PairFeatureConverter(seqio.FeatureConverter):
  """Pads and truncates x, y (and H negatives) to fixed lengths; keeps closing delimiters.

  Args:
    suffix_lengths: side ("x", "y") -> number of template ids after the body.
    pad_ids: side -> id used for padding.
    num_negatives: H, how many negatives per example the model gets (0: none).
    teacher_scores: the task has a `teacher_scores` feature (float [1 + its
      negatives]) to cut or pad to [1+H] alongside the negatives.

  Task feature lengths: {"x": Lx, "y": Ly} (and "negatives": Ly when H > 0).
  """

  TASK_FEATURES = {}
  MODEL_FEATURES = {}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, suffix_lengths: Mapping[str, int], pad_ids: Mapping[str, int],
               num_negatives: int = 0, teacher_scores: bool = False):
    self.teacher_scores = bool(teacher_scores)
    self.suffix_lengths = dict(suffix_lengths)
    self.pad_ids = dict(pad_ids)
    self.num_negatives = int(num_negatives)
    self.TASK_FEATURES = {"x": _Spec(tf.int32), "y": _Spec(tf.int32)}  # pylint: disable=invalid-name
    self.MODEL_FEATURES = {  # pylint: disable=invalid-name
        "x_tokens": _Spec(tf.int32), "x_mask": _Spec(tf.int32),
        "y_tokens": _Spec(tf.int32), "y_mask": _Spec(tf.int32),
        "x_truncated": _Spec(tf.int32, rank=0), "y_truncated": _Spec(tf.int32, rank=0),
    }
    if self.num_negatives:
      self.TASK_FEATURES["negatives"] = _Spec(tf.int32, rank=2, sequence_dim=1)
      self.MODEL_FEATURES.update({
          "neg_tokens": _Spec(tf.int32, rank=2, sequence_dim=1),
          "neg_mask": _Spec(tf.int32, rank=2, sequence_dim=1),
          "neg_truncated": _Spec(tf.int32, rank=0),
      })
    if self.teacher_scores:
      self.TASK_FEATURES["teacher_scores"] = _Spec(tf.float32)
      self.MODEL_FEATURES["teacher_scores"] = _Spec(tf.float32)
    # Inputs longer than the lengths are expected: this converter truncates them.
    super().__init__(pack=False, apply_length_check=False)

  def task_feature_lengths(self, x_length: int, y_length: int) -> dict[str, int]:
    """The `task_feature_lengths` argument for these sequence lengths."""
    lengths = {"x": x_length, "y": y_length}
    if self.num_negatives:
      lengths["negatives"] = y_length
    if self.teacher_scores:
      # Lines may hold more negatives (and scores) than the H kept: no length check.
      lengths["teacher_scores"] = 2**31 - 1
    return lengths

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    lx, ly = task_feature_lengths["x"], task_feature_lengths["y"]
    h = self.num_negatives

    def convert(batch):
      out = {}
      for side, length in (("x", lx), ("y", ly)):
        rows = batch[side]
        if not isinstance(rows, tf.RaggedTensor):
          rows = tf.RaggedTensor.from_tensor(rows)
        tokens, mask, cut = fit_rows(rows, length, self.suffix_lengths[side], self.pad_ids[side])
        out.update({f"{side}_tokens": tokens, f"{side}_mask": mask,
                    f"{side}_truncated": tf.cast(cut, tf.int32)})
      if h:
        negatives = batch["negatives"][:, :h]  # [b, <=H, None]
        tokens, mask, cut = fit_rows(negatives.values, ly, self.suffix_lengths["y"], self.pad_ids["y"])
        per_example = lambda v, pad: negatives.with_values(v).to_tensor(pad, shape=[None, h, ly])  # noqa: E731
        out.update({
            "neg_tokens": per_example(tokens, self.pad_ids["y"]),
            "neg_mask": per_example(mask, 0),
            "neg_truncated": tf.reduce_sum(negatives.with_values(tf.cast(cut, tf.int32)), axis=1),
        })
      if self.teacher_scores:
        scores = batch["teacher_scores"]
        if not isinstance(scores, tf.RaggedTensor):
          scores = tf.RaggedTensor.from_tensor(scores)
        # The positive's and the first H negatives' scores, as the negatives are cut.
        out["teacher_scores"] = scores[:, :1 + h].to_tensor(0.0, shape=[None, 1 + h])
      return out

    return ds.ragged_batch(CONVERT_BATCH).map(convert, num_parallel_calls=tf.data.AUTOTUNE).unbatch()

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    lx, ly = task_feature_lengths["x"], task_feature_lengths["y"]
    lengths = {"x_tokens": lx, "x_mask": lx, "y_tokens": ly, "y_mask": ly,
               "x_truncated": 1, "y_truncated": 1}
    if self.num_negatives:
      lengths.update({"neg_tokens": ly, "neg_mask": ly, "neg_truncated": 1})
    if self.teacher_scores:
      lengths["teacher_scores"] = 1 + self.num_negatives
    return lengths
