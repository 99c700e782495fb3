"""Training SentencePiece vocabularies for models trained from scratch (no tensorflow).

The model keeps text exactly (no normalisation, spaces and newlines kept, bytes
for unseen characters), which code needs; the delimiters are single pieces, so
`[ ]` and `{ }` wrap every text as one token each. Ids 0 and 1 are <pad> and <unk>.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence

import gin

from embed_jax.data import stdlib_corpus

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("[", "]", "{", "}", "\n", "\t")


def train_sentencepiece(texts: Iterable[str], model_path: str, vocab_size: int = 8000,
                        model_type: str = "unigram", symbols: Sequence[str] = DEFAULT_SYMBOLS,
                        hard_vocab_limit: bool = False) -> str:
  """Trains a SentencePiece model on `texts` and writes it to `model_path`.

  Args:
    texts: training texts (each may span lines).
    model_path: where the `.model` file goes (its folder is created).
    vocab_size: target number of pieces (at most, when the text is too small,
      unless `hard_vocab_limit`).
    model_type: 'unigram' | 'bpe'.
    symbols: strings that are always one piece (the delimiters, newline, tab).

  Returns:
    model_path.
  """
  import sentencepiece  # pylint: disable=import-outside-toplevel
  folder = os.path.dirname(os.path.abspath(model_path))
  os.makedirs(folder, exist_ok=True)
  texts = [t for t in texts if t]
  if not texts:
    raise ValueError("no texts to train a SentencePiece model on")
  handle, partial = tempfile.mkstemp(suffix=".partial", dir=folder)
  try:
    with os.fdopen(handle, "wb") as model:
      sentencepiece.SentencePieceTrainer.train(
          sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
          model_type=model_type, user_defined_symbols=list(symbols),
          pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, byte_fallback=True,
          normalization_rule_name="identity", remove_extra_whitespaces=False,
          allow_whitespace_only_pieces=True, split_digits=True,
          max_sentence_length=1 << 16, hard_vocab_limit=hard_vocab_limit,
          num_threads=max(1, min(4, os.cpu_count() or 1)), minloglevel=2)
    os.replace(partial, model_path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  log.info("trained SentencePiece model %s on %d texts", model_path, len(texts))
  return model_path


def stdlib_training_texts(cache: str | None = None) -> list[str]:
  """Both sides of every train pair of the built-in stdlib corpora."""
  texts = []
  for corpus in stdlib_corpus.CORPORA:
    with open(stdlib_corpus.corpus_file(corpus, "train", cache), encoding="utf-8") as f:
      for line in f:
        pair = json.loads(line)
        texts += [pair["x"], pair["y"]]
  return texts


@gin.configurable
def stdlib_sentencepiece_model(vocab_size: int = 8000, cache: str | None = None) -> str:
  """Path of the built-in SentencePiece model, trained on the stdlib corpora on first use.

  For models trained from scratch with no other vocabulary: in gin,
  `text_encoder.sentencepiece_model = @stdlib_sentencepiece_model()`. The file is
  cached per Python version (the corpus differs between versions); keep a copy
  with the trained model.
  """
  folder = stdlib_corpus.corpus_folder(cache)
  path = os.path.join(folder, f"sentencepiece_{vocab_size}.model")
  if not os.path.isfile(path):
    train_sentencepiece(stdlib_training_texts(cache), path, vocab_size=vocab_size)
  return path
