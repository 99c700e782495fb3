"""LoRA adapters in a model directory, and their export as a PEFT adapter folder.

A model trained with LoRA (`train.lora_rank`) is a normal model directory
holding the MERGED weights, plus

    DIR/lora_adapters.safetensors   the adapters ("<module path>/lora_a", ".../lora_b")
    model.json metadata "lora"      {rank, alpha, targets, adapted}

`embed-jax export --peft` writes beside the sentence-transformers folder

    OUT/peft/base/      the base encoder as a `transformers` model (merged - adapters)
    OUT/peft/adapter/   adapter_config.json + adapter_model.safetensors (PEFT's LoRA)

so that `PeftModel.from_pretrained(AutoModel.from_pretrained(OUT/peft/base),
OUT/peft/adapter)` computes the merged model. The adapter's tensors carry
transformers' module names, so it loads onto the original Hugging Face base
as well (the base written here equals it up to float32 rounding of the merge).
PEFT's lora_A.weight [r, in] is our lora_a [*in, r] flattened and transposed,
lora_B.weight [out, r] our lora_b [r, *out] likewise; the update alpha/r *
B @ A is checked against the merged weights before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from embed_jax import partitioning
from embed_jax.checkpoints import model_dir
from embed_jax.models import lora as lora_lib
from embed_jax.models.bert import BertConfig
from embed_jax.models.stack import SCANNED_NAME
from embed_jax.models.transformer import DecoderConfig

ADAPTERS_FILE = "lora_adapters.safetensors"
PEFT_DIR = "peft"
BASE_DIR, ADAPTER_DIR = "base", "adapter"
_PEFT_PREFIX = "base_model.model."


def _host(tree: Any) -> Any:
  """A numpy copy of a (possibly sharded, multi-process) tree on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)


def save_adapters(directory: str | Path, adapters: Any) -> Path:
  """Writes `adapters` (the LoRA tree) into a model directory; every process calls it."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  path = Path(directory) / ADAPTERS_FILE
  leaves = {k: np.ascontiguousarray(v) for k, v in lora_lib.adapter_leaves(_host(adapters)).items()}
  if jax.process_index() == 0:
    save_file(leaves, str(path))
  partitioning.barrier(f"embed_jax.save_adapters:{path}")
  return path


def load_adapters(directory: str | Path) -> dict[str, Any]:
  """The LoRA tree (numpy) of a model directory trained with LoRA."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  path = Path(directory) / ADAPTERS_FILE
  if not path.is_file():
    raise model_dir.ModelDirError(f"{path}: missing; the model directory was not trained with "
                                  "LoRA (train.lora_rank > 0)")
  return lora_lib.adapters_from_leaves(load_file(str(path)))


def _per_layer(adapters: dict[str, Any], num_layers: int) -> dict[str, Any]:
  """Adapters of scanned layers (stacked under `layers`) as layer_0 ... layer_{n-1}."""
  if SCANNED_NAME not in adapters:
    return adapters
  rest = {k: v for k, v in adapters.items() if k != SCANNED_NAME}
  stacked = adapters[SCANNED_NAME]
  for i in range(num_layers):
    rest[f"layer_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
  return rest


def _check_representable(config: Any) -> None:
  from embed_jax.checkpoints.export_st import ExportError  # pylint: disable=import-outside-toplevel
  if isinstance(config, DecoderConfig) and config.position_embedding == "learned":
    raise ExportError("--peft: a GPT-2 model keeps q, k and v in one fused Conv1D tensor (c_attn), "
                      "which PEFT adapts as one; separate q/k/v adapters cannot be written as "
                      "PEFT's (export without --peft: the merged model exports as usual)")
  if not isinstance(config, (DecoderConfig, BertConfig)):
    raise ExportError(f"--peft: no PEFT layout for {type(config).__name__}")


def peft_tensors(config: Any, adapters: dict[str, Any], lora: dict[str, Any]
                 ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(PEFT adapter tensors, our module path -> transformers module name) of the encoder's adapters."""
  from embed_jax.checkpoints import hf_params  # pylint: disable=import-outside-toplevel
  layout_hint = {"wte.weight": None} if (
      isinstance(config, DecoderConfig) and config.position_embedding == "learned") else {}
  sources = hf_params._sources(config, layout_hint)  # pylint: disable=protected-access
  leaves = lora_lib.adapter_leaves(_per_layer(adapters, config.num_layers))
  tensors, modules = {}, {}
  rank = int(lora["rank"])
  for key in sorted(k for k in leaves if k.endswith("/" + lora_lib.A_NAME)):
    ours = key[:-len(lora_lib.A_NAME) - 1]
    source = sources.get(ours + "/kernel")
    if source is None or not source.name.endswith(".weight"):
      raise AssertionError(f"no transformers tensor for the adapted kernel {ours}")
    module = source.name[:-len(".weight")]
    a = np.asarray(leaves[key], np.float32)
    b = np.asarray(leaves[f"{ours}/{lora_lib.B_NAME}"], np.float32)
    tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
    tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.reshape(rank, -1).T)
    modules[ours] = module
  return tensors, modules


def unmerge(encoder: dict[str, Any], adapters: dict[str, Any], scale: float) -> dict[str, Any]:
  """The base encoder params (numpy): each adapted kernel minus scale * lora_a @ lora_b (float64)."""
  base = jax.tree.map(np.asarray, encoder)
  leaves = lora_lib.adapter_leaves(adapters)
  for key in (k for k in leaves if k.endswith("/" + lora_lib.A_NAME)):
    path = key.split("/")[:-1]
    node = base
    for part in path:
      node = node[part]
    kernel = node["kernel"]
    a = np.asarray(leaves[key], np.float64)
    b = np.asarray(leaves["/".join(path + [lora_lib.B_NAME])], np.float64)
    lead = a.ndim + b.ndim - 2 - kernel.ndim
    rank = a.shape[-1]
    update = np.matmul(a.reshape(*a.shape[:lead], -1, rank), b.reshape(*b.shape[:lead], rank, -1))
    node["kernel"] = (kernel.astype(np.float64) - scale * update.reshape(kernel.shape)
                      ).astype(kernel.dtype)
  return base


def adapter_config(lora: dict[str, Any], modules: list[str], base: str) -> dict[str, Any]:
  """PEFT's adapter_config.json for the adapters (exact module names as targets)."""
  return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base,
          "r": int(lora["rank"]), "lora_alpha": float(lora["alpha"]),
          "target_modules": sorted(modules), "lora_dropout": 0.0, "bias": "none",
          "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
          "modules_to_save": None, "inference_mode": True, "init_lora_weights": True}


def check_exportable(model: str | Path) -> dict[str, Any]:
  """The model directory's LoRA record; raises ExportError unless `export_peft` can write it."""
  from embed_jax.checkpoints import export_st  # pylint: disable=import-outside-toplevel
  record = model_dir.read_model_record(model)
  lora = record.get("metadata", {}).get("lora")
  if not lora:
    raise export_st.ExportError(f"--peft: {model} was not trained with LoRA (no 'lora' in its "
                                f"{model_dir.CONFIG_FILE} metadata)")
  _check_representable(model_dir.config_from_json(record["config"]).encoder)
  if not (Path(model) / ADAPTERS_FILE).is_file():
    raise model_dir.ModelDirError(f"{Path(model) / ADAPTERS_FILE}: missing (the LoRA adapters)")
  return lora


def export_peft(model: str | Path, out: str | Path) -> Path:
  """Writes OUT/base and OUT/adapter (see the module docstring) for a LoRA model directory."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import export_st, hf_params  # pylint: disable=import-outside-toplevel
  lora = check_exportable(model)
  loaded = model_dir.load_model(model)
  config = loaded.config.encoder
  out = Path(out)
  if out.exists() and any(out.iterdir()):
    raise model_dir.ModelDirError(f"{out} exists and is not empty")
  adapters = load_adapters(model)
  merged = model_dir.params_to_numpy(loaded.params)
  scale = float(lora["alpha"]) / int(lora["rank"])
  base_encoder = unmerge(merged["encoder"], adapters, scale)
  tensors, modules = peft_tensors(config, adapters, lora)

  # The adapter applied to the base in transformers' layout must give the merged tensors.
  hf_merged = hf_params.params_to_hf(config, merged["encoder"])
  hf_base = hf_params.params_to_hf(config, base_encoder)
  for module in modules.values():
    update = scale * (tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"].astype(np.float64)
                      @ tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"].astype(np.float64))
    want = hf_merged[module + ".weight"].astype(np.float64)
    got = hf_base[module + ".weight"] + update
    tolerance = 1e-5 * max(1.0, float(np.abs(want).max()))
    if np.abs(got - want).max() > tolerance:
      raise AssertionError(f"PEFT layout of {module} does not reproduce the merged weight")

  base_dir, adapter_dir = out / BASE_DIR, out / ADAPTER_DIR
  base_loaded = dataclasses.replace(loaded, params={**merged, "encoder": base_encoder})
  export_st._write_hf_folder(base_dir, base_loaded, "x",  # pylint: disable=protected-access
                             loaded.metadata.get("max_length") or config.max_length)
  adapter_dir.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(adapter_dir / "adapter_model.safetensors"))
  (adapter_dir / "adapter_config.json").write_text(json.dumps(
      adapter_config(lora, list(modules.values()), str(base_dir.absolute())), indent=2) + "\n")
  return out
