"""`embed-jax embed` end to end: the file's rows equal `embed_texts` of the same texts, in order."""

import json

import jax
import numpy as np
import pytest

from embed_jax import main
from embed_jax.checkpoints import model_dir
from embed_jax.embedding import embed_texts
from embed_jax.models import DecoderConfig, DualEncoderConfig, init_dual_encoder
from embed_jax.tokenization import text_encoder

TEXTS = ["a longer text about cats and dogs and other animals", "", "short", "   ",
         "def f(x):\treturn x", "Ünïcödé ✓", "a longer text about cats and dogs and other animals"]


@pytest.fixture(scope="module")
def tiny_model(minilm_tokenizer_json, tmp_path_factory):
  """A tiny eos-pooled decoder model directory on the MiniLM vocabulary."""
  encoder = text_encoder(tokenizer_json=minilm_tokenizer_json)
  config = DualEncoderConfig(
      encoder=DecoderConfig(vocab_size=encoder.vocab_size, d_model=16, num_layers=1, num_heads=2,
                            max_length=32),
      x_delimiter_ids=encoder.delimiter_ids("x"), y_delimiter_ids=encoder.delimiter_ids("y"))
  _, params = init_dual_encoder(config, jax.random.key(0))
  return model_dir.save_model(tmp_path_factory.mktemp("m") / "model", config, params,
                              tokenizer_path=minilm_tokenizer_json)


@pytest.fixture(scope="module")
def expected(tiny_model):
  """The oracle: embed_texts on one device, y side."""
  loaded = model_dir.load_model(tiny_model)
  return embed_texts(loaded.module, loaded.params, loaded.text_encoder, TEXTS, side="y")


def test_text_lines_to_npy(tiny_model, expected, tmp_path):
  (tmp_path / "in.txt").write_text("\r\n".join(TEXTS) + "\r\n", encoding="utf-8")
  assert main.main(["embed", "--model", str(tiny_model), "--input", str(tmp_path / "in.txt"),
                    "--output", str(tmp_path / "out.npy"), "--side", "y", "--batch_size", "8",
                    "--no_progress"]) == 0
  got = np.load(tmp_path / "out.npy")
  assert got.shape == (len(TEXTS), 16)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  np.testing.assert_array_equal(got[0], got[-1])  # same text, same row, wherever it sits
  assert not np.allclose(got[1], got[2])  # the empty line is embedded, not dropped


def test_jsonl_field_to_jsonl(tiny_model, expected, tmp_path):
  lines = [json.dumps({"id": i, "text": t}) for i, t in enumerate(TEXTS)]
  (tmp_path / "in.jsonl").write_text("\n".join(lines), encoding="utf-8")
  assert main.main(["embed", "--model", str(tiny_model), "--input", str(tmp_path / "in.jsonl"),
                    "--field", "text", "--output", str(tmp_path / "out.jsonl"), "--side", "y",
                    "--no_progress"]) == 0
  rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [r["index"] for r in rows] == list(range(len(TEXTS)))
  np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-5)


@pytest.mark.parametrize("content, args, message", [
    (None, [], "cannot read --input"),
    (b"fine\n\xff\xfe broken\n", [], r"in\.txt:2: not UTF-8 text"),
    (b'{"text": "a"}\n{"text": \n', ["--field", "text"], r"in\.txt:2: not a JSON object"),
    (b'{"text": "a"}\n{"body": "b"}\n', ["--field", "text"], r"in\.txt:2: no field 'text'"),
    (b'{"text": 3}\n', ["--field", "text"], r"in\.txt:1: field 'text' is int"),
    (b"a\n", ["--output", "out.csv"], "must end in one of"),
])
def test_bad_inputs_are_named(tiny_model, tmp_path, content, args, message):
  if content is not None:
    (tmp_path / "in.txt").write_bytes(content)
  with pytest.raises(main.CommandLineError, match=message):
    # A repeated --output replaces the first one (argparse keeps the last).
    main.main(["embed", "--model", str(tiny_model), "--input", str(tmp_path / "in.txt"),
               "--output", str(tmp_path / "out.npy"), "--no_progress", *args])


def test_missing_model_directory_is_named(tmp_path):
  (tmp_path / "in.txt").write_text("a\n")
  with pytest.raises(main.CommandLineError, match="not a model directory"):
    main.main(["embed", "--model", str(tmp_path), "--input", str(tmp_path / "in.txt"),
               "--output", str(tmp_path / "o.npy")])
