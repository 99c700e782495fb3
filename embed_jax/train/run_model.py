"""Which model a run trains: from `init_from` or from gin, and the frozen guide model beside it.

`init_from` is a model directory, or anything `embed-jax convert` reads (a
Hugging Face or sentence-transformers folder, a .gguf file,
`package:MODULE/path`), converted once by process 0 into
`model_dir/pretrained`; the data is then tokenised with that model's
tokenizer and templates. Without it the model is gin's `DualEncoderConfig()`
with the delimiter ids of gin's `text_encoder`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from etils import epath

from embed_jax import partitioning, tokenization
from embed_jax.checkpoints import model_dir as model_dir_lib
from embed_jax.errors import ConfigError
from embed_jax.models.dual_encoder import DualEncoderConfig
from embed_jax.train.objective import GuideModel

PRETRAINED_DIR = "pretrained"


def model_config(text_encoder: tokenization.TextEncoder) -> DualEncoderConfig:
  """`DualEncoderConfig()` from gin, with eos delimiter ids taken from the text encoder."""
  config = DualEncoderConfig()  # pylint: disable=no-value-for-parameter
  updates = {}
  for side in ("x", "y"):
    if getattr(config, f"{side}_delimiter_ids") is None:
      open_id, close_id = text_encoder.delimiter_ids(side)
      if open_id is not None and close_id is not None:
        updates[f"{side}_delimiter_ids"] = (open_id, close_id)
  config = dataclasses.replace(config, **updates) if updates else config
  if text_encoder.vocab_size > config.encoder.vocab_size:
    raise ConfigError(f"the text encoder has {text_encoder.vocab_size} ids but the model's "
                      f"vocab_size is {config.encoder.vocab_size}")
  return config


def resolve_init_from(init_from: str, model_dir: epath.Path) -> str:
  """A model directory for `init_from`: itself when it is one, else its conversion (done once)."""
  from embed_jax.checkpoints import convert  # pylint: disable=import-outside-toplevel
  source = epath.Path(tokenization.resolve_path(init_from))
  if (source / model_dir_lib.CONFIG_FILE).is_file():
    return str(source)
  if not source.exists():
    raise ConfigError(f"train.init_from={init_from!r}: no such model directory, file or folder")
  target = model_dir / PRETRAINED_DIR
  if jax.process_index() == 0 and not (target / model_dir_lib.CONFIG_FILE).is_file():
    convert.convert(source, target, overwrite=True)
  partitioning.barrier("embed_jax_convert_init_from")
  return str(target)


@dataclasses.dataclass
class RunModel:
  """The model a run trains.

  Attributes:
    config: the dual encoder's config.
    text_encoder: how its texts become tokens.
    init_from: the model directory the params start from (None: scratch).
    inherited: metadata the final model keeps from init_from (its max_length).
  """
  config: DualEncoderConfig
  text_encoder: tokenization.TextEncoder
  init_from: str | None
  inherited: dict[str, Any]


def run_model(init_from: str | None, model_dir: epath.Path, compute_dtype: str | None) -> RunModel:
  """The model from `init_from` (see the module docstring) or from gin, in `compute_dtype`."""
  inherited = {}
  if init_from:
    init_from = resolve_init_from(init_from, model_dir)
    record = model_dir_lib.read_model_record(init_from)
    inherited = {k: v for k, v in record.get("metadata", {}).items() if k == "max_length"}
    config = model_dir_lib.config_from_json(record["config"], f"{init_from}/model.json")
    config = model_dir_lib.with_gin_overrides(config, f"train.init_from={init_from!r}")
    text_spec = model_dir_lib.TextEncoderSpec(**{
        k: (tuple(v) if isinstance(v, list) else v) for k, v in record["text_encoder"].items()})
    text_encoder = text_spec.build(init_from)
    text_spec.bind(init_from)  # The data must tokenise as the model was trained to read.
  else:
    text_encoder = tokenization.text_encoder()
    config = model_config(text_encoder)
  if compute_dtype is not None:
    config = model_dir_lib.with_compute_dtype(config, compute_dtype)
  return RunModel(config, text_encoder, init_from, inherited)


def _tokenizer_identity(text_encoder: tokenization.TextEncoder) -> tuple:
  return (text_encoder.tokenizer.to_str() if hasattr(text_encoder.tokenizer, "to_str")
          else text_encoder.vocab_size, text_encoder.pad_id)


def load_guide(guide_model: str, model: RunModel, mesh, rules,
               lengths: tuple[int, int], packed: bool) -> tuple[GuideModel, Any]:
  """(GuideModel, its params on `mesh`) for `train.guide_model`, checked to embed this run's batches.

  The guide embeds the batch's own token ids, so it must read the same
  tokenizer, and its positions must cover the batch's lengths.
  """
  where = f"train.guide_model={guide_model!r}"
  path = epath.Path(tokenization.resolve_path(guide_model))
  if not (path / model_dir_lib.CONFIG_FILE).is_file():
    raise ConfigError(f"{where}: not a model directory (no {model_dir_lib.CONFIG_FILE}); convert it "
                      "first with `embed-jax convert`")
  loaded = model_dir_lib.load_model(path, mesh, rules)
  if _tokenizer_identity(loaded.text_encoder) != _tokenizer_identity(model.text_encoder):
    raise ConfigError(f"{where}: its tokenizer differs from the trained model's; a guide embeds "
                      "the batch's token ids, so it must read the same tokenizer")
  longest = max(lengths)
  if loaded.config.encoder.max_length < longest:
    raise ConfigError(f"{where}: it embeds at most {loaded.config.encoder.max_length} tokens but "
                      f"the batches hold texts of up to {longest}")
  if loaded.config.pooling == "eos":
    for side in ("x", "y"):
      if model.text_encoder.delimiter_ids(side)[1] != loaded.config.closing_id(side):
        raise ConfigError(f"{where}: it pools side {side} at its closing delimiter (id "
                          f"{loaded.config.closing_id(side)}), which this run's texts do not end with")
  if packed and loaded.config.pooling != model.config.pooling:
    raise ConfigError(f"{where}: packed batches pool every text where the trained model does "
                      f"({model.config.pooling!r}); the guide pools {loaded.config.pooling!r}. Set "
                      "StepConfig.pack=False or use a guide with the same pooling")
  return GuideModel(loaded.module, str(path)), loaded.params
