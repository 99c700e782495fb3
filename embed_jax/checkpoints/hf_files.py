"""Reading a local `transformers` model folder: config.json and its tensors.

Tensors come from `model.safetensors`, or the shards a
`model.safetensors.index.json` lists (read lazily, one tensor at a time, with
the `safetensors` library), or else from `pytorch_model.bin` (single or
sharded by `pytorch_model.bin.index.json`; torch is imported only then).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors import SafetensorError, safe_open

from embed_jax.checkpoints.hf_config import EncoderConfig, HFConversionError, config_from_hf
from embed_jax.checkpoints.hf_params import params_from_hf

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"


def read_hf_config(folder: str | Path) -> dict[str, Any]:
  """The folder's config.json as a dict."""
  path = Path(folder) / "config.json"
  if not path.is_file():
    raise HFConversionError(f"{path} not found: not a transformers model folder")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class SafetensorsTensors(Mapping):
  """Lazy name -> numpy array over one or more .safetensors files.

  Each access reads one tensor; dtypes numpy lacks (bfloat16, float8) are
  read through jax on the CPU and returned as ml_dtypes numpy arrays.
  """

  def __init__(self, files: list[Path]):
    self._file_of: dict[str, Path] = {}
    for path in files:
      try:
        with safe_open(str(path), framework="numpy") as f:
          names = list(f.keys())
      except SafetensorError as e:
        raise HFConversionError(f"{path}: damaged or truncated safetensors file ({e})") from e
      for name in names:
        if name in self._file_of:
          raise HFConversionError(f"tensor {name!r} is in both {self._file_of[name]} and {path}")
        self._file_of[name] = path

  def __getitem__(self, name: str) -> np.ndarray:
    path = self._file_of[name]
    try:
      with safe_open(str(path), framework="numpy") as f:
        return f.get_tensor(name)
    except TypeError:  # numpy does not know the dtype (e.g. bfloat16)
      with jax.default_device(jax.devices("cpu")[0]), safe_open(str(path), framework="flax") as f:
        return np.asarray(f.get_tensor(name))
    except SafetensorError as e:
      raise HFConversionError(f"{path}: tensor {name!r} cannot be read ({e})") from e

  def __iter__(self) -> Iterator[str]:
    return iter(self._file_of)

  def __len__(self) -> int:
    return len(self._file_of)


def _index_files(folder: Path, index_name: str) -> list[Path]:
  """The shard files an index json lists (each checked to exist)."""
  with open(folder / index_name, encoding="utf-8") as f:
    weight_map = json.load(f).get("weight_map")
  if not weight_map:
    raise HFConversionError(f"{folder / index_name} has no weight_map")
  files = [folder / name for name in sorted(set(weight_map.values()))]
  for path in files:
    if not path.is_file():
      raise HFConversionError(f"shard {path} listed in {folder / index_name} is missing")
  return files


def _torch_tensors(files: list[Path]) -> dict[str, np.ndarray]:
  """Every tensor of the pytorch_model.bin files, as float numpy arrays where numpy lacks the dtype."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise HFConversionError(
        f"reading {files[0]} needs torch (pip install torch); safetensors files do not") from e
  tensors: dict[str, np.ndarray] = {}
  for path in files:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for name, tensor in state.items():
      if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
      tensors[name] = tensor.numpy()
  return tensors


def read_hf_tensors(folder: str | Path) -> Mapping[str, np.ndarray]:
  """The folder's tensors by `transformers` name (safetensors preferred, lazily read)."""
  folder = Path(folder)
  if (folder / SAFETENSORS_INDEX).is_file():
    return SafetensorsTensors(_index_files(folder, SAFETENSORS_INDEX))
  if (folder / SAFETENSORS).is_file():
    return SafetensorsTensors([folder / SAFETENSORS])
  if (folder / PYTORCH_INDEX).is_file():
    return _torch_tensors(_index_files(folder, PYTORCH_INDEX))
  if (folder / PYTORCH).is_file():
    return _torch_tensors([folder / PYTORCH])
  present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "(no such folder)"
  raise HFConversionError(
      f"no weights in {folder}: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {PYTORCH} or "
      f"{PYTORCH_INDEX}; found {present}")


def load_hf(folder: str | Path, **overrides: Any) -> tuple[EncoderConfig, dict[str, Any]]:
  """(encoder config, numpy params) of a local `transformers` model folder.

  `overrides` replace fields of the config (e.g. dtype="bfloat16"); fields
  that change param shapes would make the conversion fail on shapes.
  """
  config = config_from_hf(read_hf_config(folder), **overrides)
  return config, params_from_hf(config, read_hf_tensors(folder))
