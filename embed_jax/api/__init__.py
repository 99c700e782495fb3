"""The public Python API (re-exported lazily by `embed_jax`): load, Model, train, evaluate.

See `embed_jax.api.model` (loading and embedding) and `embed_jax.api.runs`
(training and evaluation runs).
"""

from embed_jax.api.model import ApiError, Model, load
from embed_jax.api.runs import evaluate, train

__all__ = ["ApiError", "Model", "evaluate", "load", "train"]
