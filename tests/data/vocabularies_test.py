"""seqio Vocabularies over the TextEncoder: tensorflow and Python give the same ids."""

import gin
import numpy as np
import pytest
import tensorflow as tf

from embed_jax import tokenization
from embed_jax.data import vocabularies

TEXTS = ["def f(x):\n    return [x]", "Return the {value}.", "é"]


@pytest.fixture(scope="module")
def encoder(sentencepiece_path):
  return tokenization.TextEncoder(tokenization.SentencePieceTokenizer(sentencepiece_path))


def test_encode_tf_matches_python_for_scalars_vectors_and_ragged(encoder):
  vocab = vocabularies.TemplateVocabulary(encoder, "y")
  expected, _ = encoder.encode_ids(TEXTS, "y")
  assert vocab.encode(TEXTS[0]) == expected[0]
  assert vocab.encode_tf(tf.constant(TEXTS[0])).numpy().tolist() == expected[0]
  assert vocab.encode_tf(tf.constant(TEXTS)).to_list() == expected
  ragged = tf.ragged.constant([[TEXTS[0], TEXTS[1]], [], [TEXTS[2]]])
  assert vocab.encode_tf(ragged).to_list() == [[expected[0], expected[1]], [], [expected[2]]]


def test_decode_keeps_delimiters_and_brackets_inside(encoder):
  vocab = vocabularies.TemplateVocabulary(encoder, "x")
  ids = vocab.encode(TEXTS[0])
  assert vocab.decode(ids) == "[ " + TEXTS[0] + "]"  # A "]" in the text does not end decoding.
  assert vocab.decode_tf(tf.constant(ids)).numpy().decode() == vocab.decode(ids)
  assert vocab.eos_id is None and vocab.vocab_size == encoder.vocab_size


def test_configured_vocabulary_follows_gin(sentencepiece_path, encoder):
  vocab = vocabularies.ConfiguredVocabulary("y")
  gin.bind_parameter("text_encoder.sentencepiece_model", sentencepiece_path)
  assert vocab == vocabularies.TemplateVocabulary(encoder, "y")
  assert vocab != vocabularies.TemplateVocabulary(encoder, "x")
  gin.bind_parameter("text_encoder.y_suffix", ["END"])
  assert vocab.encode("a")[-1] == encoder.vocab_size  # "END" is not a piece: added after the vocabulary.
  np.testing.assert_equal(vocab.template.suffix_ids, (encoder.vocab_size,))
