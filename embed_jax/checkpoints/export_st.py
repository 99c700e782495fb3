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

What its own modules cannot express comes from `st_modules.py`, copied into
the folder as `embed_jax_modules.py` (load with `trust_remote_code=True`): a
bidirectional decoder (`DecoderConfig.causal=False`), latent-attention pooling,
and mean pooling whose prompt token count differs from sentence-transformers'.
The model's prompts become the folder's `prompts` ("x", "y"; a one-side folder
applies its side's by default), with `include_prompt=False` for mean and latent
pooling. After writing, the folder is loaded back and must reproduce the
model's embeddings of `PROBE_TEXTS` (cosine >= 0.9999), else it is removed and
the export refused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from embed_jax import paths
from embed_jax.checkpoints import model_card, model_dir
from embed_jax.checkpoints.hf_config import config_to_hf
from embed_jax.checkpoints.hf_params import params_to_hf
from embed_jax.errors import UserError
from embed_jax.models.transformer import DecoderConfig

ST_POOLING = {"eos": "lasttoken", "last": "lasttoken", "mean": "mean", "cls": "cls"}
CUSTOM_MODULE_FILE = "embed_jax_modules.py"
MIN_COSINE = 0.9999
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
  # A bidirectional decoder is written as its causal twin; BidirectionalTransformer drops the mask.
  hf_encoder = dataclasses.replace(encoder, causal=True) if bidirectional(loaded) else encoder
  (folder / "config.json").write_text(json.dumps(config_to_hf(hf_encoder), indent=2) + "\n")
  params = model_dir.params_to_numpy(loaded.params)
  tensors = params_to_hf(encoder, params["encoder"])
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
  tokenizer, tokenizer_config = _side_tokenizer(loaded, side, max_length)
  tokenizer.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def bidirectional(loaded: model_dir.LoadedModel) -> bool:
  """Whether the encoder is a decoder run without its causal mask."""
  return isinstance(loaded.config.encoder, DecoderConfig) and not loaded.config.encoder.causal


def _latent_pooling(loaded: model_dir.LoadedModel, include_prompt: bool, prompt_offset: int):
  """st_modules.LatentAttentionPooling holding the model's latent_pool params."""
  import torch  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import st_modules  # pylint: disable=import-outside-toplevel
  config = loaded.config
  d = config.encoder.d_model
  module = st_modules.LatentAttentionPooling(
      d, config.latent_attention_latents, config.latent_attention_heads,
      include_prompt=include_prompt, prompt_offset=prompt_offset)
  p = model_dir.params_to_numpy(loaded.params)["latent_pool"]
  weights = {
      "latents": p["latents"],
      "query.weight": p["query"]["kernel"].reshape(d, -1).T,
      "key.weight": p["key"]["kernel"].reshape(d, -1).T,
      "value.weight": p["value"]["kernel"].reshape(d, -1).T,
      "out.weight": p["out"]["kernel"].reshape(-1, d).T,
      "wi.weight": p["mlp"]["wi"]["kernel"].T, "wi.bias": p["mlp"]["wi"]["bias"],
      "wo.weight": p["mlp"]["wo"]["kernel"].T, "wo.bias": p["mlp"]["wo"]["bias"],
  }
  module.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in weights.items()})
  return module


def _prompt_offset(transformer: Any, loaded: model_dir.LoadedModel, side: str, prompt: str) -> int:
  """Prompt tokens embed_jax leaves out minus those sentence-transformers' count covers."""
  from embed_jax.embedding import prompt_token_count  # pylint: disable=import-outside-toplevel
  theirs = transformer._get_prompt_length(prompt)  # pylint: disable=protected-access
  if theirs is None:
    raise ExportError("sentence-transformers reports no prompt length for this tokenizer, so it "
                      "could not leave the prompt out of the pooling; nothing was written")
  return prompt_token_count(loaded.text_encoder, side, prompt) - int(theirs)


def _sentence_transformer(hf_folder: Path, loaded: model_dir.LoadedModel, max_length: int,
                          sides: tuple[str, ...]) -> tuple[Any, bool]:
  """(the SentenceTransformer of `sides`, whether it uses st_modules' custom modules)."""
  import torch  # pylint: disable=import-outside-toplevel
  from sentence_transformers import SentenceTransformer, models  # pylint: disable=import-outside-toplevel
  from transformers.utils import logging as hf_logging  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import st_modules  # pylint: disable=import-outside-toplevel
  config = loaded.config
  custom = bidirectional(loaded)
  transformer_class = st_modules.BidirectionalTransformer if custom else models.Transformer
  # BERT's unused pooler (we never export one) would otherwise be reported as missing.
  verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
  hf_logging.set_verbosity_error()
  hf_logging.disable_progress_bar()
  try:
    transformer = transformer_class(str(hf_folder), max_seq_length=max_length)
  finally:
    hf_logging.set_verbosity(verbosity)
    if bars:
      hf_logging.enable_progress_bar()
  prompts = {s: loaded.prompts.get(s, "") for s in sides if loaded.prompts.get(s)}
  averages = config.pooling in ("mean", "latent_attention")
  offsets = {_prompt_offset(transformer, loaded, s, p) for s, p in prompts.items()} if averages else set()
  if len(offsets) > 1:
    raise ExportError(f"the sides' prompts would need different token counts {sorted(offsets)} "
                      "in one folder; export each side with --side")
  offset = offsets.pop() if offsets else 0
  d_model = config.encoder.d_model
  if config.pooling == "latent_attention":
    pooling_module, custom = _latent_pooling(loaded, include_prompt=False, prompt_offset=offset), True
  elif config.pooling == "mean" and offset:
    pooling_module, custom = st_modules.PromptMeanPooling(d_model, False, offset), True
  else:
    pooling_module = models.Pooling(d_model, pooling_mode=ST_POOLING[config.pooling],
                                    include_prompt=not averages)
  modules = [transformer, pooling_module]
  if config.projection_dim is not None:
    dense = models.Dense(d_model, config.projection_dim, bias=False,
                         activation_function=torch.nn.Identity())
    kernel = np.asarray(model_dir.params_to_numpy(loaded.params)["projection"]["kernel"], np.float32)
    with torch.no_grad():
      dense.linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
    modules.append(dense)
  if config.normalize:
    modules.append(models.Normalize())
  default = sides[0] if len(sides) == 1 and sides[0] in prompts else None
  model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts,
                              default_prompt_name=default)
  return model, custom


def _make_self_contained(folder: Path) -> None:
  """Copies st_modules.py into `folder` and points modules.json at that copy."""
  from embed_jax.checkpoints import st_modules  # pylint: disable=import-outside-toplevel
  shutil.copyfile(st_modules.__file__, folder / CUSTOM_MODULE_FILE)
  modules_json = folder / "modules.json"
  entries = json.loads(modules_json.read_text())
  prefix = st_modules.__name__ + "."
  for entry in entries:
    if entry["type"].startswith(prefix):
      entry["type"] = Path(CUSTOM_MODULE_FILE).stem + "." + entry["type"][len(prefix):]
  modules_json.write_text(json.dumps(entries, indent=2) + "\n")


def _check_reproduces(folder: Path, loaded: model_dir.LoadedModel, sides: tuple[str, ...],
                      max_length: int, custom: bool) -> None:
  """Loads the written folder and compares its embeddings of PROBE_TEXTS with the model's."""
  from sentence_transformers import SentenceTransformer  # pylint: disable=import-outside-toplevel
  from embed_jax.embedding import embed_with_model  # pylint: disable=import-outside-toplevel
  reloaded = SentenceTransformer(str(folder), device="cpu", trust_remote_code=custom)
  for side in sides:
    ours = embed_with_model(loaded, list(PROBE_TEXTS), side=side, max_length=max_length)
    name = side if loaded.prompts.get(side) else None
    theirs = reloaded.encode(list(PROBE_TEXTS), prompt_name=name, normalize_embeddings=False,
                             convert_to_numpy=True)
    cosine = np.sum(ours * theirs, -1) / np.maximum(
        np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1), 1e-12)
    if float(cosine.min()) < MIN_COSINE:
      raise ExportError(
          f"exporting side {side}: sentence-transformers reproduces the model's embeddings only to "
          f"cosine {float(cosine.min()):.6f} (< {MIN_COSINE}) on the probe texts; nothing was written")


def export(model: str | Path, out: str | Path, *, side: str = "both",
           max_length: int | None = None, run_dir: str | Path | None = None,
           results: dict[str, Any] | None = None) -> list[Path]:
  """Writes sentence-transformers folder(s) for a model directory; returns their paths.

  Args:
    model: the model directory.
    out: the output folder; with side="both" and sides whose templates differ,
      the folders are OUT/x and OUT/y.
    side: "x", "y" or "both".
    max_length: the exported max_seq_length; default the model's metadata
      `max_length`, else the encoder's max_length.
    run_dir, results: the run whose config.gin and results.json the model card
      (README.md, see `model_card`) describes; default the folder above
      `model` when it is a run directory (RUN/final), and its results.json.
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
    sides = ("x", "y") if side == "both" and same else (target_side,)
    with tempfile.TemporaryDirectory() as tmp:
      _write_hf_folder(Path(tmp), loaded, target_side, max_length)
      _check_reloaded_tokenizer(Path(tmp), loaded, target_side, max_length)
      with paths.local_output(folder) as local:
        model, custom = _sentence_transformer(Path(tmp), loaded, max_length, sides)
        model.save(local, create_model_card=False)
        written = paths.path(local)
        try:
          if custom:
            _make_self_contained(written)
          _check_reproduces(written, loaded, sides, max_length, custom)
        except BaseException:
          shutil.rmtree(local, ignore_errors=True)
          raise
        model_card.write_model_card(loaded, written, target_side,
                                    run_dir=run_dir or model_card.run_dir_of(loaded.directory),
                                    results=results)
  return list(targets.values())
