"""Export a model directory as a sentence-transformers folder (`embed-jax export`).

    OUT/                 one folder when both sides embed alike (or --side x|y) ...
    OUT/x, OUT/y         ... else one per side: the template differs, so the tokenizer does
      config.json, model.safetensors     the encoder as a `transformers` base model
      tokenizer.json, tokenizer_config.json
                                          the side's delimiters baked into the post-processor
                                          (a TemplateProcessing: prefix $A suffix)
      modules.json, sentence_bert_config.json, 1_Pooling/, [2_Dense/], [3_Normalize/]

`SentenceTransformer(OUT/x).encode(texts, normalize_embeddings=True)` gives our
side-x embeddings. Pooling: eos -> `lasttoken` (the closing delimiter is the
last real token, as the template puts it there and padding is on the right),
last -> `lasttoken`, mean -> `mean`, cls -> `cls`; a projection becomes a Dense
module without bias. The folder is assembled from sentence-transformers' own
modules and saved by it, so it loads in the version that wrote it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from embed_jax import paths
from embed_jax.checkpoints import model_dir
from embed_jax.checkpoints.hf_config import config_to_hf
from embed_jax.checkpoints.hf_params import params_to_hf
from embed_jax.errors import UserError

ST_POOLING = {"eos": "lasttoken", "last": "lasttoken", "mean": "mean", "cls": "cls"}
# Probe texts whose ids the exported tokenizer must reproduce exactly.
PROBE_TEXTS = ("", "Hello, world!", "def add(a, b):\n    return a + b  # sum")


class ExportError(UserError):
  """The export would not embed as the model does (named cause)."""


def _check_reloaded_tokenizer(folder: Path, loaded: model_dir.LoadedModel, side: str,
                              max_length: int) -> None:
  """Reloads `folder`'s tokenizer as sentence-transformers will and compares ids on PROBE_TEXTS.

  transformers picks the tokenizer class from config.json's model type for some
  families (e.g. qwen2) and rebuilds it, dropping the side's template; this
  turns that silent change into an error.
  """
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  reloaded = AutoTokenizer.from_pretrained(str(folder))
  expected, _ = loaded.text_encoder.encode_ids(list(PROBE_TEXTS), side, max_length)
  for text, ids in zip(PROBE_TEXTS, expected):
    got = reloaded(text)["input_ids"]
    if list(got) != list(ids):
      raise ExportError(
          f"exporting side {side}: transformers reloads the exported tokenizer as "
          f"{type(reloaded).__name__} (model type {config_to_hf(loaded.config.encoder)['model_type']!r}), "
          f"which tokenises {text!r} as {list(got)} instead of {list(ids)}; sentence-transformers "
          "would embed differently from this model, so nothing was written")


def _side_tokenizer(loaded: model_dir.LoadedModel, side: str, max_length: int):
  """The model's tokenizer with `side`'s template as its post-processor (template tokens added)."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  from tokenizers import processors  # pylint: disable=import-outside-toplevel
  tokenizer = tokenizers.Tokenizer.from_str(
      (loaded.directory / loaded.text_spec.tokenizer_file).read_text(encoding="utf-8"))
  prefix = getattr(loaded.text_spec, f"{side}_prefix")
  suffix = getattr(loaded.text_spec, f"{side}_suffix")
  template = loaded.text_encoder.template(side)
  specials = []
  for token, expected in zip((*prefix, *suffix), (*template.prefix_ids, *template.suffix_ids)):
    if tokenizer.token_to_id(token) is None:  # given an id after the vocabulary by TextEncoder
      tokenizer.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False)])
    if tokenizer.token_to_id(token) != expected:
      raise model_dir.ModelDirError(
          f"template token {token!r} gets id {tokenizer.token_to_id(token)} in the exported "
          f"tokenizer but {expected} in the model")
    specials.append((token, expected))
  tokenizer.post_processor = processors.TemplateProcessing(
      single=" ".join([*prefix, "$A", *suffix]),
      pair=" ".join([*prefix, "$A", *suffix, "$B:1"]),
      special_tokens=sorted(set(specials), key=lambda s: s[1]))
  tokenizer.no_truncation()
  pad_id = loaded.text_encoder.pad_id
  tokenizer.enable_padding(pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id), direction="right")
  tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                      "pad_token": tokenizer.id_to_token(pad_id), "padding_side": "right"}
  return tokenizer, tokenizer_config


def _write_hf_folder(folder: Path, loaded: model_dir.LoadedModel, side: str, max_length: int) -> None:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  folder.mkdir(parents=True, exist_ok=True)
  encoder = loaded.config.encoder
  (folder / "config.json").write_text(json.dumps(config_to_hf(encoder), indent=2) + "\n")
  params = model_dir.params_to_numpy(loaded.params)
  tensors = params_to_hf(encoder, params["encoder"])
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
  tokenizer, tokenizer_config = _side_tokenizer(loaded, side, max_length)
  tokenizer.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def _sentence_transformer(hf_folder: Path, loaded: model_dir.LoadedModel, max_length: int) -> Any:
  import torch  # pylint: disable=import-outside-toplevel
  from sentence_transformers import SentenceTransformer, models  # pylint: disable=import-outside-toplevel
  from transformers.utils import logging as hf_logging  # pylint: disable=import-outside-toplevel
  config = loaded.config
  # BERT's unused pooler (we never export one) would otherwise be reported as missing.
  verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
  hf_logging.set_verbosity_error()
  hf_logging.disable_progress_bar()
  try:
    transformer = models.Transformer(str(hf_folder), max_seq_length=max_length)
  finally:
    hf_logging.set_verbosity(verbosity)
    if bars:
      hf_logging.enable_progress_bar()
  modules = [transformer, models.Pooling(config.encoder.d_model, pooling_mode=ST_POOLING[config.pooling])]
  if config.projection_dim is not None:
    dense = models.Dense(config.encoder.d_model, config.projection_dim, bias=False,
                         activation_function=torch.nn.Identity())
    kernel = np.asarray(model_dir.params_to_numpy(loaded.params)["projection"]["kernel"], np.float32)
    with torch.no_grad():
      dense.linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
    modules.append(dense)
  if config.normalize:
    modules.append(models.Normalize())
  return SentenceTransformer(modules=modules, device="cpu")


def export(model: str | Path, out: str | Path, *, side: str = "both",
           max_length: int | None = None) -> list[Path]:
  """Writes sentence-transformers folder(s) for a model directory; returns their paths.

  Args:
    model: the model directory.
    out: the output folder; with side="both" and sides whose templates differ,
      the folders are OUT/x and OUT/y.
    side: "x", "y" or "both".
    max_length: the exported max_seq_length; default the model's metadata
      `max_length`, else the encoder's max_length.
  """
  if side not in ("x", "y", "both"):
    raise ValueError(f"side must be 'x', 'y' or 'both', got {side!r}")
  loaded = model_dir.load_model(model)
  max_length = max_length or loaded.metadata.get("max_length") or loaded.config.encoder.max_length
  out = paths.path(out)
  spec = loaded.text_spec
  same = (spec.x_prefix, spec.x_suffix) == (spec.y_prefix, spec.y_suffix)
  if side != "both":
    targets = {side: out}
  elif same:
    targets = {"x": out}
  else:
    targets = {s: out / s for s in ("x", "y")}
  for target_side, folder in targets.items():
    if folder.exists() and any(folder.iterdir()):
      raise model_dir.ModelDirError(f"{folder} exists and is not empty")
    with tempfile.TemporaryDirectory() as tmp:
      _write_hf_folder(Path(tmp), loaded, target_side, max_length)
      _check_reloaded_tokenizer(Path(tmp), loaded, target_side, max_length)
      with paths.local_output(folder) as local:
        _sentence_transformer(Path(tmp), loaded, max_length).save(local)
  return list(targets.values())
