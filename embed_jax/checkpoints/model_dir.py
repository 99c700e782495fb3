"""A model directory: everything needed to embed with, or train from, one model.

    DIR/
      model.json        the DualEncoderConfig and the text encoder, with each side's
                        prompt (an instruction put before its texts; read by `load_model`)
      model.gin         the same as gin bindings, for `--gin_file=DIR/model.gin`
      tokenizer.json    (or tokenizer.model, a SentencePiece model)
      params/           orbax checkpoint of the params tree

`convert` (HF/GGUF import), `train` (its final model) and `export` all read or
write this layout; `load_model` needs no gin state, so it works inside a run
whose gin config describes another model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh

from embed_jax import partitioning, paths, tokenization
from embed_jax.errors import ConfigError, UserError
from embed_jax.models.bert import BertConfig
from embed_jax.models.dual_encoder import DualEncoder, DualEncoderConfig, build_dual_encoder
from embed_jax.models.sharded_init import abstract_params, example_inputs
from embed_jax.models.transformer import DecoderConfig

FORMAT_VERSION = 1
CONFIG_FILE = "model.json"
GIN_FILE = "model.gin"
PARAMS_DIR = "params"
_ENCODERS = {"DecoderConfig": DecoderConfig, "BertConfig": BertConfig}
_TOKENIZER_FILES = {".json": "tokenizer.json", ".model": "tokenizer.model"}


class ModelDirError(UserError):
  """A model directory that is missing, incomplete or does not match its params."""


@dataclasses.dataclass(frozen=True)
class TextEncoderSpec:
  """How texts become tokens: the tokenizer file (relative to the model directory) and templates."""
  tokenizer_file: str
  x_prefix: tuple[str, ...] = ("[",)
  x_suffix: tuple[str, ...] = ("]",)
  y_prefix: tuple[str, ...] = ("{",)
  y_suffix: tuple[str, ...] = ("}",)
  x_prompt: str = ""
  y_prompt: str = ""

  @property
  def prompts(self) -> dict[str, str]:
    """side -> its prompt ("" = none)."""
    return {"x": self.x_prompt, "y": self.y_prompt}

  def arguments(self, directory: str | Path) -> dict[str, Any]:
    """`tokenization.text_encoder`'s arguments, the tokenizer file resolved inside `directory`."""
    path = str(epath.Path(directory) / self.tokenizer_file)
    kind = "sentencepiece_model" if path.endswith(".model") else "tokenizer_json"
    other = "tokenizer_json" if kind == "sentencepiece_model" else "sentencepiece_model"
    return {kind: path, other: None, "x_prefix": self.x_prefix, "x_suffix": self.x_suffix,
            "y_prefix": self.y_prefix, "y_suffix": self.y_suffix}

  def build(self, directory: str | Path) -> tokenization.TextEncoder:
    """The TextEncoder, with the tokenizer file resolved inside `directory`."""
    return tokenization.text_encoder(**self.arguments(directory))

  def bind(self, directory: str | Path) -> None:
    """Binds gin's `text_encoder` to this spec, so gin-configured data tokenises as this model does."""
    with gin.unlock_config():
      for name, value in self.arguments(directory).items():
        gin.bind_parameter(f"text_encoder.{name}", value)


@dataclasses.dataclass
class LoadedModel:
  """A model ready to embed: module, params (sharded on `mesh` when given), text encoder."""
  directory: epath.Path
  config: DualEncoderConfig
  module: DualEncoder
  params: Any
  text_encoder: tokenization.TextEncoder
  text_spec: TextEncoderSpec
  metadata: dict[str, Any]
  prompts: dict[str, str] = dataclasses.field(default_factory=dict)
  num_layers: int | None = None

  def with_options(self, prompt: str | None = None, layers: int | None = None,
                   side: str = "x") -> LoadedModel:
    """A copy that embeds with `prompt` on `side` ("" = no prompt on any side; None = the
    stored prompts) and with the first `layers` layers (None = all)."""
    prompts = dict(self.prompts)
    if prompt == "":
      prompts = {s: "" for s in prompts}
    elif prompt is not None:
      prompts[side] = prompt
    self.config.check_num_layers(layers)
    return dataclasses.replace(self, prompts=prompts, num_layers=layers)


def config_to_json(config: DualEncoderConfig) -> dict[str, Any]:
  """A JSON-able dict of the config (the encoder tagged by its class name)."""
  fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
  encoder = fields.pop("encoder")
  fields["encoder"] = {"type": type(encoder).__name__, **dataclasses.asdict(encoder)}
  return fields


def config_from_json(data: dict[str, Any], where: str = "model.json") -> DualEncoderConfig:
  """Inverse of `config_to_json`; unknown fields or encoder types name `where`."""
  data = dict(data)
  encoder = dict(data.pop("encoder", {}))
  kind = encoder.pop("type", None)
  if kind not in _ENCODERS:
    raise ModelDirError(f"{where}: encoder type {kind!r} is not one of {sorted(_ENCODERS)}")
  try:
    encoder_config = _ENCODERS[kind](**encoder)
    for key in ("x_delimiter_ids", "y_delimiter_ids"):
      if data.get(key) is not None:
        data[key] = tuple(data[key])
    return DualEncoderConfig(encoder=encoder_config, **data)
  except TypeError as e:
    raise ModelDirError(f"{where}: {e}") from e


def _gin_value(value: Any) -> str:
  if isinstance(value, tuple):
    value = list(value)
  return repr(value)


def config_to_gin(config: DualEncoderConfig, text_spec: TextEncoderSpec | None,
                  directory: str | Path | None = None) -> str:
  """Gin bindings that rebuild `config` (and the text encoder, paths made absolute)."""
  encoder = config.encoder
  name = type(encoder).__name__
  module = type(encoder).__module__
  lines = ["# Written by embed_jax; the model's architecture and vocabulary.",
           f"import {module}", "import embed_jax.models.dual_encoder", ""]
  lines.append(f"DualEncoderConfig.encoder = @{name}()")
  for f in dataclasses.fields(config):
    if f.name != "encoder":
      lines.append(f"DualEncoderConfig.{f.name} = {_gin_value(getattr(config, f.name))}")
  lines.append("")
  for f in dataclasses.fields(encoder):
    lines.append(f"{name}.{f.name} = {_gin_value(getattr(encoder, f.name))}")
  if text_spec is not None:
    lines += ["", "import embed_jax.tokenization"]
    folder = directory and (epath.Path(directory) if paths.is_cloud(directory) else Path(directory).resolve())
    path = folder / text_spec.tokenizer_file if folder else text_spec.tokenizer_file
    kind = "sentencepiece_model" if str(path).endswith(".model") else "tokenizer_json"
    lines.append(f"text_encoder.{kind} = {str(path)!r}")
    for field in ("x_prefix", "x_suffix", "y_prefix", "y_suffix"):
      lines.append(f"text_encoder.{field} = {_gin_value(getattr(text_spec, field))}")
  return "\n".join(lines) + "\n"


def _checkpointer():
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  return ocp.StandardCheckpointer()


def save_model(directory: str | Path, config: DualEncoderConfig, params: Any, *,
               tokenizer_path: str | Path, templates: dict[str, tuple[str, ...]] | None = None,
               metadata: dict[str, Any] | None = None, overwrite: bool = False,
               prompts: dict[str, str] | None = None) -> epath.Path:
  """Writes a model directory (local or gs://); returns its path.

  model.json is written last: a folder without it is not (yet) a model
  directory, so a write cut short is never loaded as one.

  Args:
    directory: where to write; must not exist (or be empty) unless `overwrite`.
    config: the model config.
    params: the params tree (arrays, possibly sharded; written collectively).
    tokenizer_path: a tokenizer.json or SentencePiece .model file, copied in.
    templates: x_prefix/x_suffix/y_prefix/y_suffix token strings (default `[ ]`, `{ }`).
    metadata: free-form JSON-able facts (e.g. the conversion source).
    prompts: side -> the prompt (instruction) put before that side's texts.
  """
  directory = paths.absolute(directory)
  if directory.exists() and not directory.is_dir():
    raise ModelDirError(f"{directory} is a file, not a folder for a model directory")
  if directory.exists() and any(directory.iterdir()):
    if not overwrite:
      raise ModelDirError(f"{directory} exists and is not empty (pass overwrite=True to replace it)")
    if not (directory / CONFIG_FILE).is_file():
      raise ModelDirError(f"{directory} is not a model directory (no {CONFIG_FILE}) and not empty: "
                          "refusing to replace its files; choose an empty or new folder")
    if jax.process_index() == 0:
      paths.rmtree(directory)
  # No process writes before process 0 has cleared the folder.
  partitioning.barrier(f"embed_jax.save_model:{directory}")
  directory.mkdir(parents=True, exist_ok=True)
  tokenizer_path = paths.path(tokenization.resolve_path(str(tokenizer_path)))
  suffix = tokenizer_path.suffix
  if suffix not in _TOKENIZER_FILES:
    raise ModelDirError(f"{tokenizer_path}: a tokenizer must be a .json or a SentencePiece .model file")
  unknown = set(prompts or {}) - {"x", "y"}
  if unknown:
    raise ModelDirError(f"prompts for unknown sides {sorted(unknown)}; sides are x and y")
  text_spec = TextEncoderSpec(_TOKENIZER_FILES[suffix], **{
      k: tuple(v) for k, v in (templates or {}).items()},
      **{f"{side}_prompt": str(p) for side, p in (prompts or {}).items()})
  if jax.process_index() == 0:
    (directory / text_spec.tokenizer_file).write_bytes(tokenizer_path.read_bytes())
    (directory / GIN_FILE).write_text(config_to_gin(config, text_spec, directory))
  checkpointer = _checkpointer()
  checkpointer.save(directory / PARAMS_DIR, params)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    record = {"format_version": FORMAT_VERSION, "config": config_to_json(config),
              "text_encoder": dataclasses.asdict(text_spec), "metadata": metadata or {}}
    (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
  partitioning.barrier(f"embed_jax.save_model_done:{directory}")
  return directory


def read_model_record(directory: str | Path) -> dict[str, Any]:
  """The parsed model.json of `directory`, with clear errors when it is missing or malformed."""
  path = epath.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise ModelDirError(f"{directory}: not a model directory ({CONFIG_FILE} missing); "
                        "make one with `embed-jax convert` or `embed-jax train`")
  try:
    record = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ModelDirError(f"{path}: not valid JSON ({e})") from e
  for key in ("config", "text_encoder"):
    if key not in record:
      raise ModelDirError(f"{path}: missing the {key!r} entry")
  if record.get("format_version", 0) > FORMAT_VERSION:
    raise ModelDirError(f"{path}: format_version {record['format_version']} is newer than this "
                        f"embed_jax understands ({FORMAT_VERSION})")
  return record


def load_params(directory: str | Path, module: DualEncoder, mesh: Mesh | None = None,
                rules: partitioning.LogicalRules | None = None,
                new_params_rng: jax.Array | None = None) -> Any:
  """Restores `directory/params` onto `mesh` (sharded by the logical rules) or one device.

  new_params_rng: when given, top-level params the module has and the
    checkpoint lacks (a latent-attention pooling or a projection added to a
    pretrained model) are freshly initialised from this key; else they are an error.
  """
  path = paths.absolute(directory) / PARAMS_DIR
  if not path.is_dir():
    raise ModelDirError(f"{path}: params checkpoint missing")
  if mesh is None:
    mesh = partitioning.single_device_mesh()
  example = example_inputs(module, partitioning.batch_size_multiple(mesh, rules))
  boxed = abstract_params(module, example, mesh, rules)
  shardings = partitioning.logical_to_shardings(boxed, mesh, rules)
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  shapes = nn.meta.unbox(boxed)
  target = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  checkpointer = _checkpointer()
  try:
    saved = set(checkpointer.metadata(path).item_metadata.tree)
  except Exception:  # pylint: disable=broad-except
    saved = set(target)  # No readable metadata: restore decides.
  missing = sorted(set(target) - saved)
  if missing and new_params_rng is None:
    raise ModelDirError(f"{path}: params {missing} of the model are not in the checkpoint")
  try:
    restored = checkpointer.restore(path, {k: v for k, v in target.items() if k not in missing})
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ModelDirError(
        f"{path}: params do not match the model in {CONFIG_FILE} or are damaged: {e}") from e
  if not missing:
    return restored

  def init(rng):
    params = nn.meta.unbox(module.init(rng, *example)["params"])
    return {k: params[k] for k in missing}  # XLA drops the rest of the initialisation.
  with partitioning.activate(mesh, rules):
    fresh = jax.jit(init, out_shardings={k: shardings[k] for k in missing})(new_params_rng)
  return {**restored, **fresh}


def load_model(directory: str | Path, mesh: Mesh | None = None,
               rules: partitioning.LogicalRules | None = None,
               compute_dtype: str | None = None) -> LoadedModel:
  """Loads a model directory: config, module, params (on `mesh` when given) and text encoder.

  compute_dtype: run the encoder in this dtype (e.g. "bfloat16": products in
    bfloat16 with float32 accumulation; norms, softmax and the embedding stay
    float32) instead of the stored config's; params keep their stored dtype.
  """
  directory = paths.absolute(directory)
  record = read_model_record(directory)
  config = config_from_json(record["config"], str(directory / CONFIG_FILE))
  if compute_dtype is not None:
    config = with_compute_dtype(config, compute_dtype)
  try:
    text_spec = TextEncoderSpec(**{
        k: (tuple(v) if isinstance(v, list) else v) for k, v in record["text_encoder"].items()})
  except TypeError as e:
    raise ModelDirError(f"{directory / CONFIG_FILE}: text_encoder: {e}") from e
  if not (directory / text_spec.tokenizer_file).is_file():
    raise ModelDirError(f"{directory / text_spec.tokenizer_file}: tokenizer file missing")
  text_encoder = text_spec.build(directory)
  if text_encoder.vocab_size > config.encoder.vocab_size:
    raise ModelDirError(
        f"{directory}: the text encoder has {text_encoder.vocab_size} ids (delimiters included) "
        f"but the model's embedding table has {config.encoder.vocab_size} rows")
  if config.pooling == "eos":
    for side in ("x", "y"):
      closing = text_encoder.delimiter_ids(side)[1]
      if closing != config.closing_id(side):
        raise ModelDirError(
            f"{directory / CONFIG_FILE}: the model pools side {side} at id {config.closing_id(side)} "
            f"but the text encoder closes that side with id {closing}")
  module = build_dual_encoder(config)
  params = load_params(directory, module, mesh, rules)
  return LoadedModel(directory, config, module, params, text_encoder, text_spec,
                     record.get("metadata", {}), prompts=text_spec.prompts)


# Settings gin may change on a model that training starts from (`train.init_from`): they
# leave the pretrained params' shapes alone (new heads, e.g. latent pooling, start fresh).
INIT_OVERRIDES = {
    "DecoderConfig": ("causal", "dropout_rate", "attention_dropout_rate", "remat_policy",
                      "scan_layers", "attention_impl", "sliding_window"),
    "BertConfig": ("dropout_rate", "attention_dropout_rate", "remat_policy", "scan_layers",
                   "attention_impl"),
    "DualEncoderConfig": ("pooling", "latent_attention_latents", "latent_attention_heads",
                          "matryoshka_layers", "projection_dim", "normalize"),
}


def _bound(name: str, field: str) -> tuple[bool, Any]:
  try:
    return True, gin.query_parameter(f"{name}.{field}")
  except ValueError:
    return False, None


def with_gin_overrides(config: DualEncoderConfig, where: str) -> DualEncoderConfig:
  """`config` (a stored model's) with the `INIT_OVERRIDES` settings gin binds explicitly.

  E.g. `DecoderConfig.causal = False` makes a converted causal decoder
  bidirectional; `DualEncoderConfig.pooling = 'latent_attention'` adds
  NV-Embed's pooling. Raises ConfigError (naming `where`) for a bad value.
  """
  encoder_name = type(config.encoder).__name__
  encoder_changes = {f: v for f in INIT_OVERRIDES[encoder_name]
                     for bound, v in [_bound(encoder_name, f)] if bound}
  changes = {f: v for f in INIT_OVERRIDES["DualEncoderConfig"]
             for bound, v in [_bound("DualEncoderConfig", f)] if bound}
  if not encoder_changes and not changes:
    return config
  try:
    encoder = dataclasses.replace(config.encoder, **encoder_changes)
    if changes.get("matryoshka_layers") is not None:
      changes["matryoshka_layers"] = tuple(tuple(p) for p in changes["matryoshka_layers"])
    return dataclasses.replace(config, encoder=encoder, **changes)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: {e}") from e


def with_compute_dtype(config: DualEncoderConfig, compute_dtype: str) -> DualEncoderConfig:
  """`config` with its encoder computing in `compute_dtype` (a jnp dtype name)."""
  try:
    name = jnp.dtype(compute_dtype).name
  except TypeError as e:
    raise ValueError(f"unknown compute dtype {compute_dtype!r}") from e
  if not jnp.issubdtype(name, jnp.floating):
    raise ValueError(f"compute dtype {compute_dtype!r} is not a floating-point type")
  return dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, dtype=name))


def params_to_numpy(params: Any) -> Any:
  """A host copy of a (possibly sharded) params tree as numpy arrays."""
  return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), params)
